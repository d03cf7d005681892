-- Argo CD resource health check for dpserve.io/PrivateModel.
-- argocd-cm: resource.customizations.health.dpserve.io_PrivateModel (docs/gitops.md).
-- Reads the kstatus conventions the operator writes: observedGeneration, Stalled,
-- Reconciling, Ready; phase only for statuses written before those conditions existed.
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the dpserve operator to reconcile"
  return hs
end

local generation = obj.metadata.generation
-- A Stalled condition written for this generation is current even where the status
-- itself could not be rewritten (StatusUnreadable keeps the old observedGeneration).
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" and
    (generation == nil or stalled.observedGeneration == generation) then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

if generation ~= nil and
    (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local ready = condition("Ready")
if obj.status.phase == "Pending" and ready ~= nil and ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = "spec.serving.replicas is 0"
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = "Serving " .. (obj.status.modelVersion or "") .. " from budget " ..
    (obj.status.budget or "") .. " (epsilon spent " .. (obj.status.epsilonSpent or "0") ..
    " of " .. (obj.status.epsilonLimit or "?") .. ")"
  return hs
end

-- A status from an operator that wrote no Reconciling/Stalled: decide by the phase.
local phase = obj.status.phase
if phase == "BudgetExhausted" or phase == "Failed" or phase == "Blocked" then
  hs.status = "Degraded"
elseif phase == "Serving" then
  hs.status = "Degraded"  -- phase Serving with Ready not True: it stopped being ready
else
  hs.status = "Progressing"
end
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "phase " .. (phase or "unknown")
end
return hs
