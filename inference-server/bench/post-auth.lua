-- wrk script: POSTs the JSON body in BODY with `Authorization: Bearer $TOKEN` when TOKEN is set.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BODY")
local token = os.getenv("TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
