-- Argo CD health check for GPUNode (serving.helixflow.io/v1alpha1).
-- Every Ready reason in api/v1alpha1 is classified below; test/argocd/health_test.go checks that.
-- Healthy: Ready=True.
-- Progressing: no status yet, Ready=Unknown, or Ready=False with a transient reason.
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

-- A GPUNode has no spec and no observedGeneration: the probe writes its status directly.
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the GPU probe to report"
  return hs
end
local generation = nil

-- Health for Ready=False, by reason.
local falseReasons = {
  ReconcileError = "Degraded",
  NVMLUnavailable = "Degraded",
  UnhealthyDevices = "Degraded",
  NoDevices = "Degraded",
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
