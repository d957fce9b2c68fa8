-- Argo CD health check for aidevsecops.dev/v1alpha1 MnistModel, from the status the operator writes.
-- Installed as resource.customizations.health.aidevsecops.dev_MnistModel in argocd-cm
-- (argocd-cm-patch.yaml is generated from this file; see docs/install.md).
--
--   Healthy      Ready=True, reported for the MnistModel's current generation.
--   Suspended    spec.replicas is 0 on purpose (Ready=False, reason ScaledToZero).
--   Progressing  no status yet; a generation the operator has not reconciled yet (status or Ready
--                condition older than metadata.generation); a rollout under way; Ready=Unknown.
--   Degraded     Ready=False for any other reason: a rollout past its progress deadline, crash
--                loops, containers that died (Error, OOMKilled), image pull errors, an invalid
--                spec, missing RBAC, a name conflict, a rejected Route, a canary rolled back
--                (CanaryRolledBack) or aborted... (the reason and message come from the Ready
--                condition).

-- Ready=False reasons that are part of getting there, not a failure (as Argo CD treats a
-- Deployment whose pods are not all available yet): the operator or the Deployment controller
-- has not caught up, pods are starting, loading the model or waiting for a node, or the API
-- server did not answer for a moment. A rollout that stays here ends in ProgressDeadlineExceeded.
-- The same set as TRANSIENT_REASONS in operator/mnist_operator/conditions.py (a test holds them equal).
local progressing_reasons = {
  DeploymentPending = true,
  RolloutPending = true,
  RolloutInProgress = true,
  PodsNotReady = true,
  NotReady = true,
  Pending = true,
  Unschedulable = true,
  ApiUnavailable = true,
  -- a canary under way, or waiting for a verdict (too few requests, Prometheus unreachable);
  -- a canary rolled back or aborted is Degraded, with its reason (CanaryRolledBack, CanaryAborted)
  CanaryProgressing = true,
  CanaryPaused = true,
}

local function find_condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == wanted then
      return condition
    end
  end
  return nil
end

local function describe(condition)
  local text = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. condition.message
  end
  return text
end

local function health(resource)
  local generation = resource.metadata and resource.metadata.generation
  local status = resource.status
  if status == nil then
    return "Progressing", "Waiting for the operator to report status"
  end
  if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
    return "Progressing", string.format(
      "Waiting for the operator to reconcile generation %s (status is for %s)",
      tostring(generation), tostring(status.observedGeneration or "none"))
  end
  local ready = find_condition(status.conditions, "Ready")
  if ready == nil then
    return "Progressing", "Waiting for the Ready condition"
  end
  if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
    return "Progressing", string.format(
      "Waiting for the Ready condition of generation %s (it is for %s)",
      tostring(generation), tostring(ready.observedGeneration))
  end
  if ready.status == "True" then
    return "Healthy", describe(ready)
  end
  if ready.reason == "ScaledToZero" then
    return "Suspended", describe(ready)
  end
  if ready.status == "False" and not progressing_reasons[ready.reason] then
    return "Degraded", describe(ready)
  end
  return "Progressing", describe(ready)
end

local hs = {}
hs.status, hs.message = health(obj)
return hs
