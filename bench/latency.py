#!/usr/bin/env python3
"""Merge-to-enforce and drift-revert latency of `palisade run` against moto or the ARM fake.

    ~/.cache/palisade-moto-venv/bin/python bench/latency.py [--cloud aws|azure] [--functions 1000] [--commits 20]

AWS: starts moto (localstack/moto-server) and seeds the estate; Azure: starts the ARM
fake (`palisade-armfake --example-estate N`). Then makes a bare Git repository of
policies-example, starts the debug `palisade` binary (build both first:
`cargo build -p palisade -p palisade-armfake`) on that cloud's target, and measures:
  * merge-to-enforce: a commit changes one policy's ingress port (AWS payments-api's
    edge, Azure orders-func's gateway); from `git push` returning until the new rule is in the
    (emulated) cloud — with a GitHub webhook sent right after the push, and with polling
    only (--poll-interval 2s);
  * drift-revert: a rule opened by hand on a managed group (AWS 0.0.0.0/0:22, Azure an
    Internet:3389 NSG rule), until it is gone, at a given resync interval;
  * event-driven drift-revert (AWS, --events N): the EventBridge rule `palisade events
    setup` prints, to an SQS queue read with --aws-events-queue, a ten-minute resync;
    the rule is opened with boto3 and the matching CloudTrail-shaped event put with
    PutEvents (moto emits none); from PutEvents returning until the rule is gone;
  * API calls per full resync and writes on a converged estate, from /metrics.
Prints one JSON object; BENCHMARKS.md quotes it.
"""
import argparse
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/palisade-target"))
BIN = os.path.join(TARGET_DIR, "debug", "palisade")
SECRET = b"bench-secret"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def git(repo, *args):
    subprocess.run(["git", "-C", repo, "-c", "user.name=Bench", "-c", "user.email=bench@example.com",
                    "-c", "commit.gpgsign=false", *args], check=True, capture_output=True)


def http(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


def metric_sum(base, prefix):
    total = 0.0
    for line in http(base + "/metrics").splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pct(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def summary(values):
    return {
        "n": len(values),
        "min": round(min(values), 3),
        "p50": round(pct(values, 50), 3),
        "p95": round(pct(values, 95), 3),
        "max": round(max(values), 3),
    }


class Aws:
    """moto, seeded by localstack/seed_aws.py; payments-api's edge port is changed."""
    target, policy_file, port, drift_port = "prod-aws", os.path.join("aws", "payments.yaml"), 8443, 22
    services = ("ec2", "lambda", "tagging")

    @staticmethod
    def edge(port):
        return f"tcp/{port} ]"

    def __init__(self, functions):
        import boto3
        out = subprocess.run([os.path.join(ROOT, "localstack", "moto-server")], check=True,
                             capture_output=True, text=True).stdout
        info = dict(line.split("=", 1) for line in out.strip().splitlines())
        self.endpoint, self.pid = info["endpoint"], int(info["pid"])
        subprocess.run([sys.executable, os.path.join(ROOT, "localstack", "seed_aws.py"), "--endpoint",
                        self.endpoint, "--functions", str(functions)], check=True, capture_output=True)
        self.ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=self.endpoint,
                                aws_access_key_id="x", aws_secret_access_key="x")
        self.env = dict(AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
                        AWS_REGION="us-east-1",
                        PALISADE_AWS_RATE_LIMITS="ec2-read=200/200,ec2-write=200/200,lambda-read=200/200,lambda-write=200/200,tagging=200/200")

    def group(self):
        g = self.ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["palisade-payments-api"]}])
        return g["SecurityGroups"][0]["GroupId"]

    def ingress_ports(self):
        rules = self.ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [self.group()]}])
        return {r["FromPort"] for r in rules["SecurityGroupRules"] if not r["IsEgress"]}

    def open_drift(self):
        self.ec2.authorize_security_group_ingress(GroupId=self.group(), IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])

    def stop(self):
        os.kill(self.pid, signal.SIGTERM)

    def client(self, service):
        import boto3
        return boto3.client(service, region_name="us-east-1", endpoint_url=self.endpoint,
                            aws_access_key_id="x", aws_secret_access_key="x")

    def event_queue(self, policies):
        """The queue and rule `palisade events setup` prints; the queue's URL."""
        out = subprocess.run([BIN, "events", "setup", "--policies", policies, "--target", self.target,
                              "--format", "json"], check=True, capture_output=True, text=True).stdout
        setup = json.loads(out)
        sqs, events = self.client("sqs"), self.client("events")
        url = sqs.create_queue(QueueName="palisade-events")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="palisade-changes", EventPattern=json.dumps(setup["eventPattern"]))
        events.put_targets(Rule="palisade-changes", Targets=[{"Id": "palisade", "Arn": arn}])
        self.events = events
        return url

    def put_drift_event(self, n):
        detail = {
            "eventSource": "ec2.amazonaws.com", "eventName": "AuthorizeSecurityGroupIngress",
            "eventTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "eventID": f"bench-{n}",
            "requestID": f"bench-req-{n}", "awsRegion": "us-east-1", "recipientAccountId": "123456789012",
            "userIdentity": {"type": "AssumedRole", "arn": f"arn:aws:sts::123456789012:assumed-role/bench/run-{n}",
                             "sessionContext": {"sessionIssuer": {"arn": "arn:aws:iam::123456789012:role/bench"}}},
            "requestParameters": {"groupId": self.group()}, "responseElements": {"_return": True},
        }
        out = self.events.put_events(Entries=[{"Source": "aws.ec2", "DetailType": "AWS API Call via CloudTrail",
                                               "Detail": json.dumps(detail)}])
        assert out["FailedEntryCount"] == 0, out


class Azure:
    """The ARM fake with N function apps; orders-func's gateway ingress port is changed."""
    target, policy_file, port, drift_port = "prod-azure", os.path.join("azure", "functions.yaml"), 443, 3389
    services = ("arm",)
    token = "bench-hand-made"
    nsg = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-prod/providers/"
           "Microsoft.Network/networkSecurityGroups/palisade-orders-func")

    @staticmethod
    def edge(port):
        return f"10.20.0.0/24 }} ], ports: [ tcp/{port} ]"

    def __init__(self, functions, procs):
        fake = os.path.join(TARGET_DIR, "debug", "palisade-armfake")
        self.proc = subprocess.Popen([fake, "--example-estate", str(functions), "--static-token", self.token],
                                     stdout=subprocess.PIPE, text=True)
        procs.append(self.proc)
        self.endpoint = self.proc.stdout.readline().strip().split("=", 1)[1]
        self.env = dict(PALISADE_AZURE_ARM_ENDPOINT=self.endpoint, AZURE_AUTHORITY_HOST=self.endpoint,
                        AZURE_TENANT_ID="t", AZURE_CLIENT_ID="bench", AZURE_CLIENT_SECRET="bench",
                        PALISADE_AZURE_POLL_INTERVAL="100ms",
                        PALISADE_AZURE_RATE_LIMITS="arm-read=500/500,arm-write=500/500")

    def arm(self, method, path, body=None):
        req = urllib.request.Request(f"{self.endpoint}{path}?api-version=2024-03-01", method=method,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def ingress_ports(self):
        try:
            nsg = self.arm("GET", self.nsg)
        except urllib.error.HTTPError:
            return set()
        return {int(r["properties"]["destinationPortRange"]) for r in nsg["properties"]["securityRules"]
                if r["properties"]["direction"] == "Inbound" and r["properties"]["destinationPortRange"].isdigit()}

    def open_drift(self):
        self.arm("PUT", f"{self.nsg}/securityRules/debug-rdp", {"properties": {
            "protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "3389",
            "sourceAddressPrefix": "Internet", "destinationAddressPrefix": "*", "access": "Allow",
            "priority": 3000, "direction": "Inbound"}})

    def stop(self):
        self.proc.terminate()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--functions", type=int, default=1000)
    ap.add_argument("--commits", type=int, default=20)
    ap.add_argument("--drifts", type=int, default=10)
    ap.add_argument("--resync", default="5s")
    ap.add_argument("--cloud", choices=["aws", "azure"], default="aws")
    ap.add_argument("--events", type=int, default=0,
                    help="AWS: also measure N event-driven drift reverts (EventBridge → SQS, 10 min resync)")
    ap.add_argument("--only-events", action="store_true", help="skip the merge and resync measures")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="palisade-bench-")
    procs = []
    cloud = Aws(args.functions) if args.cloud == "aws" else Azure(args.functions, procs)
    try:
        remote = os.path.join(work, "remote.git")
        repo = os.path.join(work, "work")
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", remote], check=True)
        subprocess.run(["git", "init", "-q", "-b", "main", repo], check=True)
        shutil.copytree(os.path.join(ROOT, "policies-example"), os.path.join(repo, "policies"))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "initial")
        git(repo, "remote", "add", "origin", remote)
        git(repo, "push", "-q", "origin", "main")
        env = dict(os.environ, PALISADE_LOG="warn", **cloud.env)

        def start(poll, resync=None, extra=()):
            port = free_port()
            p = subprocess.Popen([BIN, "run", "--git-url", "file://" + remote, "--git-path", "policies",
                                  "--target", cloud.target, "--listen", f"127.0.0.1:{port}",
                                  "--data-dir", os.path.join(work, f"data-{port}"), "--resync", resync or args.resync,
                                  *extra,
                                  "--poll-interval", poll, "--github-webhook-secret", SECRET.decode(),
                                  # Each push is one measured merge, sent as soon as the
                                  # previous one is enforced: the default 5 s spacing of
                                  # webhook fetches (burst coalescing, tested in e2e) would
                                  # be measured instead.
                                  "--webhook-min-interval", "0s",
                                  # The same drift is made again and again on purpose: flap
                                  # detection would (rightly) stop reverting it after 5.
                                  "--flap-threshold", "1000"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            base = f"http://127.0.0.1:{port}"
            deadline = time.time() + 600
            while time.time() < deadline:
                try:
                    s = json.loads(http(base + "/api/status"))
                    if s.get("converged"):
                        return p, base
                except Exception:
                    pass
                time.sleep(0.2)
            raise SystemExit("palisade run did not become ready")

        port_now = [cloud.port]

        def merge(base, webhook):
            new = 9000 + len(merge.samples) + (100 if webhook else 0)
            path = os.path.join(repo, "policies", cloud.policy_file)
            text = open(path).read().replace(cloud.edge(port_now[0]), cloud.edge(new), 1)
            open(path, "w").write(text)
            git(repo, "commit", "-q", "-am", f"port {new}")
            git(repo, "push", "-q", "origin", "main")
            t0 = time.monotonic()
            if webhook:
                body = b'{"ref":"refs/heads/main"}'
                sig = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
                http(base + "/webhook/github", body, {"X-Hub-Signature-256": sig, "X-GitHub-Event": "push"})
            while cloud.ingress_ports() != {new}:
                if time.monotonic() - t0 > 120:
                    raise SystemExit(f"port {new} not enforced in 120 s")
                time.sleep(0.02)
            port_now[0] = new
            merge.samples.append(time.monotonic() - t0)

        result = {"cloud": args.cloud, "functions": args.functions, "resync": args.resync}
        if args.events:
            # Event-driven: the resync is ten minutes away; only the events wake Palisade.
            url = cloud.event_queue(os.path.join(repo, "policies"))
            t0 = time.monotonic()
            proc, base = start("1h", "10m", ("--aws-events-queue", url))
            result["events_first_converge_s"] = round(time.monotonic() - t0, 2)
            resyncs = f'palisade_reconcile_triggers_total{{target="{cloud.target}",trigger="resync"}}'
            lag = []
            for n in range(args.events):
                cloud.open_drift()
                cloud.put_drift_event(n)
                t = time.monotonic()
                while cloud.drift_port in cloud.ingress_ports():
                    if time.monotonic() - t > 120:
                        raise SystemExit("event-driven drift not reverted in 120 s")
                    time.sleep(0.02)
                lag.append(time.monotonic() - t)
                # The next drift after this revert's reconcile is recorded (the evidence,
                # and the event's delete, follow the revert).
                time.sleep(0.5)
            result["event_drift_revert_s"] = summary(lag)
            result["event_reconciles"] = metric_sum(base, f'palisade_reconcile_triggers_total{{target="{cloud.target}",trigger="event"}}')
            result["resyncs_during_event_measure"] = metric_sum(base, resyncs)
            result["events_matched"] = metric_sum(base, "palisade_events_matched_total")
            result["events_dropped"] = metric_sum(base, "palisade_events_dropped_total")
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            if args.only_events:
                print(json.dumps(result, indent=2))
                return
        t0 = time.monotonic()
        proc, base = start("1h")
        result["first_converge_s"] = round(time.monotonic() - t0, 2)
        merge.samples = []
        for _ in range(args.commits):
            merge(base, webhook=True)
        result["merge_to_enforce_webhook_s"] = summary(merge.samples)

        # Drift: open a port by hand, wait until it is gone.
        drift = []
        for _ in range(args.drifts):
            cloud.open_drift()
            t = time.monotonic()
            while cloud.drift_port in cloud.ingress_ports():
                if time.monotonic() - t > 120:
                    raise SystemExit("drift not reverted in 120 s")
                time.sleep(0.02)
            drift.append(time.monotonic() - t)
        result["drift_revert_s"] = summary(drift)

        # API calls per resync on the converged estate.
        ok = f'palisade_reconciles_total{{target="{cloud.target}",result="ok"}}'
        r0 = metric_sum(base, ok)
        reads0 = sum(metric_sum(base, f'palisade_cloud_api_calls_total{{service="{s}"') for s in cloud.services)
        writes_ops = ("Authorize", "Revoke", "Create", "Delete", "Modify", "Update", "PUT", "PATCH", "DELETE")
        def writes():
            total = 0.0
            for line in http(base + "/metrics").splitlines():
                if line.startswith("palisade_cloud_api_calls_total") and any(f'operation="{w}' in line for w in writes_ops):
                    total += float(line.rsplit(" ", 1)[1])
            return total
        w0 = writes()
        time.sleep(30)
        r1 = metric_sum(base, ok)
        reads1 = sum(metric_sum(base, f'palisade_cloud_api_calls_total{{service="{s}"') for s in cloud.services)
        w1 = writes()
        n = r1 - r0
        result["converged_resyncs_observed"] = int(n)
        result["calls_per_resync"] = round((reads1 - reads0 - (w1 - w0)) / n, 1) if n else None
        result["writes_on_converged_estate"] = int(w1 - w0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

        # Polling only.
        proc, base = start("2s")
        merge.samples = []
        for _ in range(max(args.commits // 2, 5)):
            merge(base, webhook=False)
        result["merge_to_enforce_polling_2s_s"] = summary(merge.samples)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        print(json.dumps(result, indent=2))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        cloud.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
