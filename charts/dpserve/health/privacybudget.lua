-- Argo CD resource health check for dpserve.io/PrivacyBudget.
-- argocd-cm: resource.customizations.health.dpserve.io_PrivacyBudget (docs/gitops.md).
-- The ledger writes observedGeneration, Ready, BudgetLow and Exhausted. An exhausted
-- budget is Suspended, not Degraded: spending it is what a budget is for, and a budget a
-- model retrained away from stays exhausted for good; whether that stops serving is the
-- PrivateModel's health (Degraded when nothing retrains).
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
  hs.message = "Waiting for the dpserve ledger to compute the budget"
  return hs
end

local generation = obj.metadata.generation
-- Stalled (written by the ledger on InvalidSpec / AccountingFailed) counts for the generation
-- it was written for: a spec edit the ledger has not observed yet is Progressing.
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
  hs.message = "Waiting for the ledger to observe generation " .. generation
  return hs
end

local ready = condition("Ready")
local exhausted = condition("Exhausted")
if exhausted ~= nil and exhausted.status == "True" then
  hs.status = "Suspended"
  hs.message = "Exhausted: " .. (exhausted.message or "") ..
    " (raise spec.epsilon, or retrain onto a new budget)"
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = "epsilon spent " .. (obj.status.epsilonSpent or "0") .. " of " ..
    (obj.spec.epsilon or "?") .. ", remaining " .. (obj.status.epsilonRemaining or "?")
  local low = condition("BudgetLow")
  if low ~= nil and low.status == "True" then
    hs.message = hs.message .. " (BudgetLow: " .. (low.message or "") .. ")"
  end
  return hs
end
if ready ~= nil and ready.status == "False" then
  -- InvalidSpec, AccountingFailed: the ledger cannot tell what remains; nothing is granted.
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the ledger to compute the budget"
return hs
