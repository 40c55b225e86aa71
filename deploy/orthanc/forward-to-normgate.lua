-- Orthanc -> NormGate: forward to NormGate's STOW-RS only what one of its models assesses
-- (docs/integration.md, "Wiring NormGate to Orthanc"). Everything else stays in Orthanc untouched.
--
-- Served: chest radiographs (Modality CR, DX or DR with Body Part Examined CHEST), forwarded instance by
-- instance as they arrive; and cardiac MR 4-chamber cines (Modality MR, a 4-chamber Series Description, Body
-- Part Examined HEART, CARDIAC, CHEST, THORAX or empty), forwarded as a whole series in one STOW-RS request
-- once Orthanc finds the series stable ("StableAge" in orthanc.json), so NormGate makes the series result at
-- once. Keep these rules equal to the "serves" blocks of the deployed models (GET /models on NormGate).

local BY_INSTANCE = {
  {modalities = {CR = true, DX = true, DR = true}, bodyParts = {CHEST = true}},
}

-- A 4-chamber view by its Series Description, as the cardiac model's serves pattern reads it: "4CH", "4 ch",
-- "4-chamber", "CINE_4CH", "SSFP 4ch", "LAX 4C", "four chamber", "HLA" (horizontal long axis); not "14CH",
-- "2CH", "3CH" or "5CH" (the 5-chamber view is the planning error itself).
local FOUR_CHAMBER = {
  '%f[%d]4[ _%-]?CHAMBERS?%f[%A]',
  '%f[%d]4[ _%-]?CHS?%f[%A]',
  '%f[%d]4[ _%-]?C%f[%A]',
  'FOUR[ _%-]?CHAMBER%f[%A]',
  '%f[%a]HLA%f[%A]',
}

local BY_SERIES = {
  {modalities = {MR = true}, bodyParts = {HEART = true, CARDIAC = true, CHEST = true, THORAX = true},
   bodyPartMayBeEmpty = true, descriptions = FOUR_CHAMBER},
}

local function upper(value)
  return string.upper(value or '')
end

local function matches(rule, tags)
  if rule.modalities[upper(tags['Modality'])] ~= true then
    return false
  end
  local bodyPart = upper(tags['BodyPartExamined'])
  if not (rule.bodyPartMayBeEmpty and bodyPart == '') and rule.bodyParts[bodyPart] ~= true then
    return false
  end
  if rule.descriptions ~= nil then
    local description = upper(tags['SeriesDescription'])
    for _, pattern in ipairs(rule.descriptions) do
      if string.find(description, pattern) ~= nil then
        return true
      end
    end
    return false
  end
  return true
end

local function served(rules, tags)
  for _, rule in ipairs(rules) do
    if matches(rule, tags) then
      return true
    end
  end
  return false
end

local function forward(resourceId)
  RestApiPost('/dicom-web/servers/normgate/stow',
              DumpJson({Resources = {resourceId}, Synchronous = true}, true))
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  -- Only what modalities sent over DICOM (C-STORE): NormGate's own results come back over STOW-RS.
  if origin['RequestOrigin'] ~= 'DicomProtocol' then
    return
  end
  if served(BY_INSTANCE, tags) then
    forward(instanceId)
  end
end

function OnStableSeries(seriesId, tags, metadata)
  -- NormGate's own result series are SC, SEG and SR objects (Modality OT, SEG, SR): no series rule takes them.
  if served(BY_SERIES, tags) then
    forward(seriesId)
  end
end
