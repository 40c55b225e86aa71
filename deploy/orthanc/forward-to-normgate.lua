-- Orthanc -> NormGate: forward to NormGate's STOW-RS only the instances one of its models assesses
-- (docs/integration.md, "Wiring NormGate to Orthanc"). Everything else stays in Orthanc untouched.
--
-- Served today: chest radiographs, Modality CR, DX or DR with Body Part Examined CHEST.
-- When the cardiac MR model is deployed, also: Modality MR, 4-chamber cine series (see SERVED below).
-- Keep this list equal to the "serves" blocks of the deployed models (GET /models on NormGate).

local SERVED = {
  {modalities = {CR = true, DX = true, DR = true}, bodyParts = {CHEST = true}},
  -- Cardiac MR, 4-chamber cine (uncomment with the cardiac model):
  -- {modalities = {MR = true}, seriesDescription = '4CH'},
}

local function upper(value)
  return string.upper(value or '')
end

local function served(tags)
  for _, rule in ipairs(SERVED) do
    local ok = rule.modalities[upper(tags['Modality'])] == true
    if ok and rule.bodyParts ~= nil then
      ok = rule.bodyParts[upper(tags['BodyPartExamined'])] == true
    end
    if ok and rule.seriesDescription ~= nil then
      ok = string.find(upper(tags['SeriesDescription']), rule.seriesDescription, 1, true) ~= nil
    end
    if ok then
      return true
    end
  end
  return false
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  -- Only what modalities sent over DICOM (C-STORE): NormGate's own results come back over STOW-RS.
  if origin['RequestOrigin'] ~= 'DicomProtocol' then
    return
  end
  if not served(tags) then
    return
  end
  RestApiPost('/dicom-web/servers/normgate/stow',
              DumpJson({Resources = {instanceId}, Synchronous = true}, true))
end
