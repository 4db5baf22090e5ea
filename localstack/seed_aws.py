#!/usr/bin/env python3
"""Seed moto (or any AWS endpoint you own and mean to clobber) with an estate that
matches policies-example's `prod-aws` target, deliberately out of compliance.

Run it with the moto venv's python (boto3 comes with moto):

    ~/.cache/palisade-moto-venv/bin/python localstack/seed_aws.py \
        --endpoint http://127.0.0.1:PORT --functions 240

Prints one JSON object with the ids it created, for tests and the demo to use.
The estate:
  * VPC `prod` 10.0.0.0/16 with private subnets a/b/c (tier=private, one route table
    each) and a public subnet; VPC `dev` 10.1.0.0/16 with one private subnet.
  * `legacy-admin`: an unmanaged group open to 0.0.0.0/0 on tcp/22 (guardrail bait).
  * `impostor`: an unmanaged group tagged `palisade:policy=payments-api` but *without*
    `palisade:managed-by` -- Palisade must never touch it.
  * functions: payments-api-*, payments-db-*, ledger-worker-*, report-export-daily and
    -monthly, and misc-* that no policy selects. About a third start in the prod VPC
    behind `legacy-admin`, the rest outside any VPC.
"""
import argparse
import io
import json
import zipfile

import boto3

REGION = "us-east-1"


def client(service, endpoint):
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def tags(**kv):
    return [{"Key": k, "Value": v} for k, v in kv.items()]


def tag_spec(kind, **kv):
    return [{"ResourceType": kind, "Tags": tags(**kv)}]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--functions", type=int, default=240)
    args = ap.parse_args()
    ec2 = client("ec2", args.endpoint)
    lam = client("lambda", args.endpoint)
    iam = client("iam", args.endpoint)

    out = {"subnets": {}, "routeTables": {}, "functions": []}
    prod = ec2.create_vpc(
        CidrBlock="10.0.0.0/16", TagSpecifications=tag_spec("vpc", Name="prod")
    )["Vpc"]["VpcId"]
    dev = ec2.create_vpc(
        CidrBlock="10.1.0.0/16", TagSpecifications=tag_spec("vpc", Name="dev")
    )["Vpc"]["VpcId"]
    out["vpcs"] = {"prod": prod, "dev": dev}
    layout = [
        ("private-a", prod, "10.0.1.0/24", "a", "private"),
        ("private-b", prod, "10.0.2.0/24", "b", "private"),
        ("private-c", prod, "10.0.3.0/24", "c", "private"),
        ("public-a", prod, "10.0.100.0/24", "a", "public"),
        ("dev-private-a", dev, "10.1.1.0/24", "a", "private"),
    ]
    for name, vpc, cidr, zone, tier in layout:
        sid = ec2.create_subnet(
            VpcId=vpc,
            CidrBlock=cidr,
            AvailabilityZone=REGION + zone,
            TagSpecifications=tag_spec("subnet", Name=name, tier=tier),
        )["Subnet"]["SubnetId"]
        rtb = ec2.create_route_table(
            VpcId=vpc, TagSpecifications=tag_spec("route-table", Name=name)
        )["RouteTable"]["RouteTableId"]
        ec2.associate_route_table(RouteTableId=rtb, SubnetId=sid)
        out["subnets"][name] = sid
        out["routeTables"][name] = rtb

    legacy = ec2.create_security_group(
        GroupName="legacy-admin",
        Description="hand-made admin access",
        VpcId=prod,
        TagSpecifications=tag_spec("security-group", owner="ops"),
    )["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=legacy,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "ssh from anywhere"}],
            }
        ],
    )
    impostor = ec2.create_security_group(
        GroupName="impostor",
        Description="looks like Palisade's but is not",
        VpcId=prod,
        TagSpecifications=tag_spec("security-group", **{"palisade:policy": "payments-api"}),
    )["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=impostor,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 8443,
                "ToPort": 8443,
                "IpRanges": [{"CidrIp": "10.0.0.0/16"}],
            }
        ],
    )
    out["groups"] = {"legacy-admin": legacy, "impostor": impostor}

    role = iam.create_role(
        RoleName="palisade-demo-lambda",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]["Arn"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("index.py", "def handler(event, context):\n    return 'ok'\n")
    code = buf.getvalue()

    kinds = [
        ("payments-api", {"app": "payments", "tier": "api", "env": "prod"}),
        ("payments-db", {"app": "payments", "tier": "db-proxy", "env": "prod"}),
        ("ledger-worker", {"app": "ledger", "tier": "worker", "env": "prod"}),
        ("misc", {"app": "misc", "env": "dev"}),
    ]
    names = ["report-export-daily", "report-export-monthly"]
    n = max(args.functions - len(names), 0)
    for i in range(n):
        prefix, t = kinds[i % len(kinds)]
        names.append(f"{prefix}-{i:04d}")
    private = [out["subnets"][s] for s in ("private-a", "private-b")]
    for i, name in enumerate(names):
        t = {"env": "prod", "app": "reports"} if name.startswith("report-export") else dict(
            next(tt for p, tt in kinds if name.startswith(p))
        )
        in_vpc = i % 3 == 0
        vpc_config = (
            {"SubnetIds": private, "SecurityGroupIds": [legacy]}
            if in_vpc
            else {"SubnetIds": [], "SecurityGroupIds": []}
        )
        arn = lam.create_function(
            FunctionName=name,
            Runtime="python3.12",
            Role=role,
            Handler="index.handler",
            Code={"ZipFile": code},
            Tags=t,
            VpcConfig=vpc_config,
        )["FunctionArn"]
        out["functions"].append({"name": name, "arn": arn, "inVpc": in_vpc})
    out["role"] = role
    print(json.dumps(out))


if __name__ == "__main__":
    main()
