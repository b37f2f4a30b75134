"""A local Lambda Runtime API and the measurement loop of scripts/bench-lambda.

For each bootstrap: provision what its environment names on the AWS API emulator
(boto3 against AWS_ENDPOINT_URL), start the binary with AWS_LAMBDA_RUNTIME_API pointing
here, serve it its fixture event 6 times (1 first + 5 warm), and time:
  init  = process start -> its first GET /runtime/invocation/next
  first = event 1 handed out -> its response posted
  warm  = median of events 2-6
and read its peak RSS (VmHWM) before stopping it.
"""

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = sys.argv[1]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
INVOCATIONS = 6
CRMS = ["responsys", "salesforce", "rdstation", "webhook"]


def fixture(name):
    with open(os.path.join(ROOT, "fixtures", "events", name)) as f:
        return json.load(f)


class Run:
    """One process's conversation with the Runtime API."""

    def __init__(self, events):
        self.events = list(events)
        self.next_at = []  # when each event was handed out
        self.done_at = {}  # request id -> when its response came
        self.errors = []
        self.first_next = None
        self.stopping = False
        self.cond = threading.Condition()


RUN = None


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            # The harness stopped the process while its poll was held.
            pass

    def _reply(self, status, body=b"", headers=None):
        try:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The harness stopped the process while its poll was held.
            pass

    def do_GET(self):
        run = RUN
        now = time.monotonic()
        with run.cond:
            if run.first_next is None:
                run.first_next = now
            if not run.events:
                # Nothing more: hold the poll until the harness stops the process (a
                # notify for another invocation's response must not release it: the
                # runtime would take the empty answer for a malformed event).
                deadline = now + 60
                while not run.stopping and time.monotonic() < deadline:
                    run.cond.wait(timeout=0.5)
                self._reply(500)
                return
            event = run.events.pop(0)
            run.next_at.append(now)
        request_id = str(uuid.uuid4())
        run.ids = getattr(run, "ids", []) + [request_id]
        self._reply(
            200,
            json.dumps(event).encode(),
            {
                "Content-Type": "application/json",
                "Lambda-Runtime-Aws-Request-Id": request_id,
                "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 60_000),
                "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:123456789012:function:bench",
                "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000",
            },
        )

    def do_POST(self):
        run = RUN
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = self.path.strip("/").split("/")
        if len(parts) == 5 and parts[2] == "invocation" and parts[4] in ("response", "error"):
            request_id = parts[3]
            with run.cond:
                run.done_at[request_id] = time.monotonic()
                if parts[-1] == "error":
                    run.errors.append(body.decode(errors="replace")[:300])
                run.cond.notify_all()
        elif parts[-1] == "error":
            run.errors.append(body.decode(errors="replace")[:300])
        self._reply(202, b"{}", {"Content-Type": "application/json"})


def provision(prefix):
    ddb = boto3.client("dynamodb")
    names = {
        "NAVIGATION_TABLE": f"{prefix}-navigation",
        "CLIENTS_TABLE": f"{prefix}-clients",
        "RDSTATION_CONFIG_TABLE": f"{prefix}-rdstation",
        "TOKENS_TABLE": f"{prefix}-tokens",
        "SUPPRESSION_TABLE": f"{prefix}-suppressions",
    }

    def table(name, hash_key, range_key=None, range_type="S", stream=False):
        attrs = [{"AttributeName": hash_key, "AttributeType": "S"}]
        keys = [{"AttributeName": hash_key, "KeyType": "HASH"}]
        if range_key:
            attrs.append({"AttributeName": range_key, "AttributeType": range_type})
            keys.append({"AttributeName": range_key, "KeyType": "RANGE"})
        extra = {"StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}} if stream else {}
        ddb.create_table(TableName=name, AttributeDefinitions=attrs, KeySchema=keys,
                         BillingMode="PAY_PER_REQUEST", **extra)

    table(names["NAVIGATION_TABLE"], "recordId", "timestamp", "N", stream=True)
    table(names["CLIENTS_TABLE"], "clientId")
    table(names["RDSTATION_CONFIG_TABLE"], "tid")
    table(names["TOKENS_TABLE"], "clientId", "crm")
    table(names["SUPPRESSION_TABLE"], "emailKey", "scope")
    boto3.resource("dynamodb").Table(names["CLIENTS_TABLE"]).put_item(Item={
        "clientId": "client-abc", "crm": "responsys", "active": True,
        "allowedOrigins": ["https://www.loja-exemplo.com.br"],
    })
    key_name = f"/connect/installation/{prefix}/key"
    boto3.client("secretsmanager").create_secret(Name=key_name, SecretString="k" * 64)
    names["INSTALLATION_KEY_SECRET_NAME"] = key_name
    sqs = boto3.client("sqs")
    for crm in CRMS:
        for kind in ("QUEUE_URL", "DLQ_URL"):
            url = sqs.create_queue(QueueName=f"{prefix}-{crm}-{kind.lower().replace('_', '-')}")["QueueUrl"]
            names[f"{kind}_{crm.upper()}"] = url
    names["ALERT_TOPIC_ARN"] = boto3.client("sns").create_topic(Name=f"{prefix}-alerts")["TopicArn"]
    return names


def measure(binary, env, event):
    global RUN
    RUN = Run([event] * INVOCATIONS)
    full_env = dict(os.environ, **env)
    full_env.update({
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{SERVER.server_address[1]}",
        "AWS_LAMBDA_FUNCTION_NAME": os.path.basename(binary),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_FORMAT": "JSON",
        "RUST_LOG": "warn",
    })
    started = time.monotonic()
    proc = subprocess.Popen([binary], env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    with RUN.cond:
        while len(RUN.done_at) < INVOCATIONS and time.monotonic() < deadline and proc.poll() is None:
            RUN.cond.wait(timeout=0.5)
    with RUN.cond:
        RUN.stopping = True
        RUN.cond.notify_all()
    rss_kb = 0
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss_kb = int(line.split()[1])
    except FileNotFoundError:
        pass
    proc.kill()
    _, err = proc.communicate()
    with RUN.cond:
        RUN.cond.notify_all()
    ids = getattr(RUN, "ids", [])
    durations = [RUN.done_at[i] - t for i, t in zip(ids, RUN.next_at) if i in RUN.done_at]
    if RUN.first_next is None or len(durations) < INVOCATIONS:
        raise SystemExit(f"{binary}: {len(durations)} invocations answered (handed {len(ids)}, answered {len(RUN.done_at)}, exit {proc.returncode}, errors {RUN.errors[:2]}); stderr: {err.decode(errors='replace')[-800:]}")
    return {
        "init_ms": (RUN.first_next - started) * 1000,
        "first_ms": durations[0] * 1000,
        "warm_ms": statistics.median(durations[1:]) * 1000,
        "rss_mb": rss_kb / 1024,
        "errors": RUN.errors,
    }


def zip_size(binary):
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench-{os.path.basename(binary)}.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o755 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(binary, "rb") as f:
            z.writestr(info, f.read())
    size = os.path.getsize(path)
    os.remove(path)
    return size


SERVER = ThreadingHTTPServer(("127.0.0.1", 0), Api)
threading.Thread(target=SERVER.serve_forever, daemon=True).start()

EVENTS = {
    "hello_lambda": {"hello": "world"},
    "ingest": fixture("apigw-responsys-json.json"),
    "fanout": fixture("dynamodb-stream-batch.json"),
    "deliver": fixture("sqs-responsys-batch.json"),
    "token": fixture("scheduled-token-responsys.json"),
}

results = {name: [] for name in EVENTS}
for r in range(ROUNDS):
    env = provision(f"bench{uuid.uuid4().hex[:8]}")
    for name, event in EVENTS.items():
        binary = os.path.join(TARGET, "examples" if name == "hello_lambda" else "", name)
        extra = {"CRM": "responsys", "QUEUE_URL": env["QUEUE_URL_RESPONSYS"], "DLQ_URL": env["DLQ_URL_RESPONSYS"]}
        results[name].append(measure(binary, {**env, **extra}, event))

hello = results["hello_lambda"]
base_init = statistics.median(x["init_ms"] for x in hello)
print(f"{'binary':<13} {'init ms':>8} {'× hello':>8} {'first ms':>9} {'warm ms':>8} {'RSS MB':>7} {'zip KB':>7}")
for name, runs in results.items():
    init = statistics.median(x["init_ms"] for x in runs)
    first = statistics.median(x["first_ms"] for x in runs)
    warm = statistics.median(x["warm_ms"] for x in runs)
    rss = max(x["rss_mb"] for x in runs)
    binary = os.path.join(TARGET, "examples" if name == "hello_lambda" else "", name)
    errors = sorted({e for x in runs for e in x["errors"]})
    print(f"{name:<13} {init:8.1f} {init / base_init:8.2f} {first:9.1f} {warm:8.2f} {rss:7.1f} {zip_size(binary) / 1024:7.0f}"
          + (f"  errors: {errors[:1]}" if errors else ""))
SERVER.shutdown()
