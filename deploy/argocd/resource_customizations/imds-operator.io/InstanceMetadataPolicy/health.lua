-- Argo CD health of an InstanceMetadataPolicy (imds-operator.io), from its kstatus conditions:
-- Degraded while Stalled=True (a person must act), Healthy when Ready=True for the current
-- generation, Progressing otherwise (no status yet, an older generation, changes in flight).
local hs = {status = "Progressing", message = "Waiting for the operator to reconcile the policy"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local found = {}
for _, c in ipairs(obj.status.conditions) do
  if c.type ~= nil then
    found[c.type] = c
  end
end
local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return (c.reason or c.type) .. ": " .. c.message
  end
  return c.reason or c.type
end
if found.Stalled ~= nil and found.Stalled.status == "True" then
  return {status = "Degraded", message = describe(found.Stalled)}
end
if found.Ready ~= nil and found.Ready.status == "True" then
  return {status = "Healthy", message = describe(found.Ready)}
end
if found.Reconciling ~= nil and found.Reconciling.status == "True" then
  return {status = "Progressing", message = describe(found.Reconciling)}
end
if found.Ready ~= nil then
  hs.message = describe(found.Ready)
end
return hs
