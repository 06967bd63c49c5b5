-- Argo CD health of a Sluice ModelVersion (Lua 5.1, as Argo CD's gopher-lua runs it).
-- Reads the conditions the operator publishes (crds/src/model_version.rs): Ready (the source
-- and format were checked) and AliasConflict (another version claims one of its aliases).
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the sluice-operator to check this version"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the sluice-operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(status, "Ready")
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status == "False" then
  hs.status = "Degraded"
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
  return hs
end

local conflict = condition(status, "AliasConflict")
if conflict ~= nil and conflict.status == "True" then
  hs.status = "Degraded"
  hs.message = "Alias conflict: " .. (conflict.message or "")
  return hs
end

hs.status = "Healthy"
hs.message = ready.message or "Ready"
return hs
