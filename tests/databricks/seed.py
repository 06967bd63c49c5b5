"""The seed's serving calls, unchanged, against a Sluice gateway: the official databricks-sdk
client and MLflow's Databricks deployment client. DATABRICKS_HOST / DATABRICKS_TOKEN name the
gateway and a Kubernetes token; VIEWER_TOKEN a token that may only query. Prints one JSON
object per step on stdout, which the Rust test reads."""

import json
import os
import sys
from collections import Counter
from datetime import timedelta

from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import (
    InvalidParameterValue,
    NotFound,
    PermissionDenied,
    ResourceAlreadyExists,
)
from databricks.sdk.service.serving import (
    AiGatewayConfig,
    AiGatewayRateLimit,
    AiGatewayRateLimitKey,
    AiGatewayRateLimitRenewalPeriod,
    DataframeSplitInput,
    EndpointCoreConfigInput,
    Route,
    ServedEntityInput,
    ServedModelInput,
    TrafficConfig,
)

NAME = sys.argv[1]
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROW = [[6.7, 3.0, 5.2, 2.3]]
WAIT = timedelta(minutes=5)


def step(name, **fields):
    print(json.dumps({"step": name, **fields}), flush=True)


def one_version(name, version):
    """The create config of endpoint `name` serving iris `version`."""
    return EndpointCoreConfigInput(
        name=name,
        served_entities=[ServedEntityInput(entity_name="iris", entity_version=version)],
    )


def refused(call, error):
    try:
        call()
    except error as e:
        return {"error": type(e).__name__, "error_code": e.error_code, "message": str(e)}
    raise AssertionError(f"expected {error.__name__}")


w = WorkspaceClient(host=os.environ["DATABRICKS_HOST"], token=os.environ["DATABRICKS_TOKEN"])

# The seed passes `config` as a dict; the SDK itself refuses that before any request is sent
# (it calls `config.as_dict()`), so the calls below use the SDK's typed classes.
try:
    w.serving_endpoints.create(
        name="seed-dict",
        config={"served_models": [{"model_name": "iris", "model_version": "1",
                                   "workload_size": "Small", "scale_to_zero_enabled": True}]},
    )
    step("seed_dict", sent=True)
except AttributeError as e:
    step("seed_dict", sent=False, error=str(e))

# create → wait (the SDK polls GET until config_update is NOT_UPDATING)
created = w.serving_endpoints.create_and_wait(
    name=NAME,
    config=EndpointCoreConfigInput(
        name=NAME,
        served_entities=[
            ServedEntityInput(entity_name="iris", entity_version="1", workload_size="Small")
        ],
    ),
    timeout=WAIT,
)
step(
    "created",
    ready=created.state.ready.value,
    config_update=created.state.config_update.value,
    entities=[e.name for e in created.config.served_entities],
    config_version=created.config.config_version,
)

# query
answer = w.serving_endpoints.query(
    name=NAME, dataframe_split=DataframeSplitInput(columns=COLUMNS, data=ROW)
)
step("queried", predictions=answer.predictions, served_model_name=answer.served_model_name)

# update_config: the 90/10 split of the seed, in its older served_models spelling
updated = w.serving_endpoints.update_config_and_wait(
    name=NAME,
    served_models=[
        ServedModelInput(
            model_name="iris", model_version="1", workload_size="Small", scale_to_zero_enabled=False
        ),
        ServedModelInput(
            model_name="iris", model_version="2", workload_size="Small", scale_to_zero_enabled=False
        ),
    ],
    traffic_config=TrafficConfig(
        routes=[
            Route(served_model_name="iris-1", traffic_percentage=90),
            Route(served_model_name="iris-2", traffic_percentage=10),
        ]
    ),
    timeout=WAIT,
)
step(
    "updated",
    ready=updated.state.ready.value,
    config_update=updated.state.config_update.value,
    config_version=updated.config.config_version,
    routes=[[r.served_model_name, r.traffic_percentage] for r in updated.config.traffic_config.routes],
    pending=updated.pending_config is not None,
)

served = Counter()
for _ in range(200):
    answer = w.serving_endpoints.query(
        name=NAME, dataframe_split=DataframeSplitInput(columns=COLUMNS, data=ROW)
    )
    served[answer.served_model_name] += 1
step("split", served=dict(served))

# the gateway policies of the AI gateway
gateway = w.serving_endpoints.put_ai_gateway(
    name=NAME,
    rate_limits=[
        AiGatewayRateLimit(
            calls=1000,
            key=AiGatewayRateLimitKey.USER,
            renewal_period=AiGatewayRateLimitRenewalPeriod.MINUTE,
        )
    ],
)
step("ai_gateway", rate_limits=[r.as_dict() for r in gateway.rate_limits])

listed = [e.name for e in w.serving_endpoints.list()]
step("listed", names=listed)

# MLflow's Databricks deployment client, as the seed calls it
from mlflow.deployments import get_deploy_client  # noqa: E402

client = get_deploy_client("databricks")
prediction = client.predict(
    endpoint=NAME, inputs={"dataframe_split": {"columns": COLUMNS, "data": ROW}}
)
endpoint = client.get_endpoint(NAME)
step(
    "mlflow",
    predictions=prediction["predictions"],
    state=endpoint["state"],
    listed=[e["name"] for e in client.list_endpoints()],
)

# errors, in the SDK's own exception classes
viewer = WorkspaceClient(host=os.environ["DATABRICKS_HOST"], token=os.environ["VIEWER_TOKEN"])
step(
    "errors",
    exists=refused(
        lambda: w.serving_endpoints.create(name=NAME, config=one_version(NAME, "1")),
        ResourceAlreadyExists,
    ),
    missing=refused(lambda: w.serving_endpoints.get("no-such-endpoint"), NotFound),
    forbidden=refused(
        lambda: viewer.serving_endpoints.create(
            name="viewer-made", config=one_version("viewer-made", "1")
        ),
        PermissionDenied,
    ),
    invalid=refused(
        lambda: w.serving_endpoints.create(
            name="bad-version", config=one_version("bad-version", "latest")
        ),
        InvalidParameterValue,
    ),
    viewer_query=viewer.serving_endpoints.query(
        name=NAME, dataframe_split=DataframeSplitInput(columns=COLUMNS, data=ROW)
    ).predictions,
)

w.serving_endpoints.delete(NAME)
step("deleted")
