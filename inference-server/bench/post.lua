-- wrk script: POSTs the JSON body in the BODY environment variable; counts non-2xx answers.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BODY")
