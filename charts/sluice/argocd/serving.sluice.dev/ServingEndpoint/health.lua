-- Argo CD health of a Sluice ServingEndpoint (Lua 5.1, as Argo CD's gopher-lua runs it).
-- Reads what the operator publishes (crds/src/serving_endpoint/status.rs): state.ready
-- (READY / NOT_READY), state.configUpdate (NOT_UPDATING / IN_PROGRESS / UPDATE_FAILED /
-- UPDATE_CANCELED), per-entity deployment states of the active and pending configs, and the
-- Ready / Resolved / Supported / Updating conditions.
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

-- The first entity of a config whose deployment state is `wanted`, as "name: message".
local function entity_in(config, wanted)
  if config == nil or config.servedEntities == nil then
    return nil
  end
  for _, e in ipairs(config.servedEntities) do
    if e.state ~= nil and e.state.deployment == wanted then
      local message = e.state.deploymentStateMessage or wanted
      return (e.name or "?") .. ": " .. message
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.state == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the sluice-operator to publish a status"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the sluice-operator to observe generation " .. tostring(generation)
  return hs
end

local resolved = condition(status, "Resolved")
if resolved ~= nil and resolved.status == "False" then
  hs.status = "Degraded"
  hs.message = "Spec cannot be resolved: " .. (resolved.message or resolved.reason or "")
  return hs
end

local supported = condition(status, "Supported")
if supported ~= nil and supported.status == "False" then
  hs.status = "Degraded"
  hs.message = "Uses fields this Sluice does not act on: " .. (supported.message or supported.reason or "")
  return hs
end

local state = status.state
if state.configUpdate == "UPDATE_FAILED" then
  local failed = entity_in(status.pendingConfig, "DEPLOYMENT_FAILED")
    or entity_in(status.config, "DEPLOYMENT_FAILED")
  hs.status = "Degraded"
  if failed ~= nil then
    hs.message = "Update failed (" .. failed .. "); the previous config keeps serving"
  else
    hs.message = "Update failed; the previous config keeps serving"
  end
  return hs
end

if state.configUpdate == "IN_PROGRESS" then
  local version = status.pendingConfig and status.pendingConfig.configVersion
  hs.status = "Progressing"
  hs.message = "Rolling out config " .. tostring(version or "?")
  local creating = entity_in(status.pendingConfig, "DEPLOYMENT_CREATING")
  if creating ~= nil then
    hs.message = hs.message .. " (" .. creating .. ")"
  end
  return hs
end

if state.ready == "READY" then
  hs.status = "Healthy"
  if status.trafficSummary ~= nil and status.trafficSummary ~= "" then
    hs.message = "Ready; traffic " .. status.trafficSummary
  else
    hs.message = "Ready"
  end
  return hs
end

-- NOT_READY with no update rolling out: failed entities are Degraded, the rest are coming up.
local failed = entity_in(status.config, "DEPLOYMENT_FAILED")
if failed ~= nil then
  hs.status = "Degraded"
  hs.message = failed
  return hs
end
hs.status = "Progressing"
hs.message = entity_in(status.config, "DEPLOYMENT_RECOVERING")
  or entity_in(status.config, "DEPLOYMENT_CREATING")
  or "Waiting for entities to become ready"
return hs
