-- Argo CD health check for hotconf's RuntimeConfig and PoolBudget (one script serves both).
-- Install it in argocd-cm under both keys:
--   resource.customizations.health.hotconf.dev_RuntimeConfig
--   resource.customizations.health.hotconf.dev_PoolBudget
-- It reads the kstatus-style status the operator writes: Ready, Valid, RolledBack and Paused
-- conditions, and observedGeneration.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the hotconf operator to reconcile"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local conditions = {}
for _, c in ipairs(obj.status.conditions) do
  conditions[c.type] = c
end
local valid = conditions["Valid"]
if valid ~= nil and valid.status == "False" then
  hs.status = "Degraded"
  hs.message = "Invalid spec (the last valid revision stays projected): " .. (valid.message or "")
  return hs
end
local paused = conditions["Paused"]
if paused ~= nil and paused.status == "True" then
  hs.status = "Suspended"
  hs.message = "spec.paused is true: revisions are recorded but not projected"
  return hs
end
local rolled = conditions["RolledBack"]
if rolled ~= nil and rolled.status == "True" then
  -- A deliberate hold: an older revision is live, not the spec in Git.
  hs.status = "Suspended"
  hs.message = "Rolled back: " .. (rolled.message or "")
  return hs
end
local ready = conditions["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end
hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil then
  hs.message = ready.message
else
  hs.message = "Not ready yet"
end
return hs
