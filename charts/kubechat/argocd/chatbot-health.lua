-- Argo CD health check for kubechat.dev/ChatBot, built on the operator's status contract:
-- status.observedGeneration says whether the operator has seen the latest spec, and the Ready,
-- Progressing and Degraded conditions say what the bot's pods do. Install it in argocd-cm as
-- resource.customizations.health.kubechat.dev_ChatBot (see docs/observability.md).
local hs = {}
if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubechat operator to reconcile the bot"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "The operator has not reconciled the latest spec yet"
  return hs
end
local found = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    found[condition.type] = condition
  end
end
local function say(condition)
  return (condition.reason or "") .. ": " .. (condition.message or "")
end
local degraded, ready, progressing = found["Degraded"], found["Ready"], found["Progressing"]
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = say(degraded)
elseif ready ~= nil and ready.status == "True" and ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = say(ready)
elseif ready ~= nil and ready.status == "True" and (progressing == nil or progressing.status ~= "True") then
  hs.status = "Healthy"
  hs.message = say(ready)
elseif progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = say(progressing)
elseif ready ~= nil then
  hs.status = "Degraded"
  hs.message = say(ready)
else
  hs.status = "Progressing"
  hs.message = "Waiting for the bot's conditions"
end
return hs
