"""HTTP routes. They parse the request, call the service layer and shape the answer; no tensors here."""
