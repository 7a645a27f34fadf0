-- Argo CD health check for InferenceModel (serving.helixflow.io/v1alpha1).
-- Every Ready reason in api/v1alpha1 is classified below; test/argocd/health_test.go checks that.
-- Healthy: Ready=True and status.observedGeneration == metadata.generation.
-- Progressing: no status yet, observedGeneration behind metadata.generation, Ready=Unknown, or Ready=False with a transient reason.
-- Degraded: Ready=False with any other reason; the message is the Ready condition's.
local hs = {}

local function readyCondition(status)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == "Ready" then
      return c
    end
  end
  return nil
end

local function describe(c)
  local msg = c.message
  if msg == nil or msg == "" then
    msg = "Ready is " .. tostring(c.status)
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason .. ": " .. msg
  end
  return msg
end

local status = obj.status
local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to report status"
  return hs
end
if status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. tostring(generation) ..
    " (status is for " .. tostring(status.observedGeneration) .. ")"
  return hs
end

-- Health for Ready=False, by reason.
local falseReasons = {
  ReconcileError = "Degraded",
  ReplicasNotReady = "Progressing",
  WeightsFetching = "Progressing",
  IngressPending = "Progressing",
  RoutePending = "Progressing",
  CertificatePending = "Progressing",
  -- cert-manager Certificate Ready reasons mirrored through TLSReady while it is issued
  DoesNotExist = "Progressing",
  CertificateNotReady = "Progressing",
  NotScheduled = "Degraded",
  WeightsFailed = "Degraded",
  InvalidEndpoint = "Degraded",
  RouteNotAccepted = "Degraded",
  GatewayAPINotInstalled = "Degraded",
  NoIssuer = "Degraded",
  CertManagerNotInstalled = "Degraded",
}

local ready = readyCondition(status)
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.observedGeneration ~= nil and generation ~= nil and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Ready condition is for an older generation"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
if ready.status ~= "False" then
  hs.status = "Progressing"
  hs.message = describe(ready)
  return hs
end
local verdict = falseReasons[ready.reason]
if verdict == nil then
  -- A reason this script does not know: report it rather than wait forever.
  verdict = "Degraded"
end
hs.status = verdict
hs.message = describe(ready)
return hs
