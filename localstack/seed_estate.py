#!/usr/bin/env python3
"""Seed moto with an estate Palisade did not make, for `palisade adopt`: hand-made
security groups that reference each other, a shared group, a customer prefix list, an
EC2 instance behind one group, an interface endpoint, and Lambda functions in the VPC.

    ~/.cache/palisade-moto-venv/bin/python localstack/seed_estate.py \
        --endpoint http://127.0.0.1:PORT [--functions 6]

Prints one JSON object with the ids it created. The estate (VPC `estate`, 10.20.0.0/16):
  * `orders-api` (only the orders API functions): ingress tcp/8443 from 10.20.0.0/16
    and tcp/8443-8444 from the office prefix list; egress tcp/5432 to `orders-db`,
    tcp/443 anywhere (AWS's default all-egress rule revoked).
  * `orders-db` (only the orders database proxies): ingress tcp/5432 from `orders-api`,
    icmp echo from 10.20.0.0/16; AWS's default egress kept.
  * `monitoring` (every function): egress udp/8125 to 10.20.9.0/24: shared, referenced.
  * `batch` (the batch functions and an EC2 instance): ingress tcp/22 from 10.20.0.0/16:
    shared with the instance, so the batch functions have no group of their own.
  * an interface endpoint for secretsmanager behind `endpoint-secrets`.
"""
import argparse
import io
import json
import zipfile

# The same boto3 client and tag helpers as the example estate's seed.
from seed_aws import REGION, client, tag_spec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--functions", type=int, default=2, help="functions per kind")
    args = ap.parse_args()
    ec2 = client("ec2", args.endpoint)
    lam = client("lambda", args.endpoint)
    iam = client("iam", args.endpoint)

    vpc = ec2.create_vpc(
        CidrBlock="10.20.0.0/16", TagSpecifications=tag_spec("vpc", Name="estate")
    )["Vpc"]["VpcId"]
    subnets = {}
    for name, cidr, zone in [("app-a", "10.20.1.0/24", "a"), ("app-b", "10.20.2.0/24", "b")]:
        subnets[name] = ec2.create_subnet(
            VpcId=vpc,
            CidrBlock=cidr,
            AvailabilityZone=REGION + zone,
            TagSpecifications=tag_spec("subnet", Name=name),
        )["Subnet"]["SubnetId"]

    def group(name, desc):
        return ec2.create_security_group(
            GroupName=name,
            Description=desc,
            VpcId=vpc,
            TagSpecifications=tag_spec("security-group", team="platform"),
        )["GroupId"]

    api = group("orders-api", "orders API, made by hand in 2019")
    db = group("orders-db", "orders database proxies")
    mon = group("monitoring", "statsd for everyone")
    batch = group("batch", "batch jobs and the bastion")
    eps = group("endpoint-secrets", "secretsmanager endpoint")
    office = ec2.create_managed_prefix_list(
        PrefixListName="office", AddressFamily="IPv4", MaxEntries=5,
        Entries=[{"Cidr": "192.0.2.0/24", "Description": "office"}],
    )["PrefixList"]["PrefixListId"]

    ec2.authorize_security_group_ingress(GroupId=api, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 8443, "ToPort": 8443,
         "IpRanges": [{"CidrIp": "10.20.0.0/16", "Description": "from the VPC"}]},
        {"IpProtocol": "tcp", "FromPort": 8443, "ToPort": 8444,
         "PrefixListIds": [{"PrefixListId": office, "Description": "from the office"}]},
    ])
    ec2.revoke_security_group_egress(GroupId=api, IpPermissions=[
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    ec2.authorize_security_group_egress(GroupId=api, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
         "UserIdGroupPairs": [{"GroupId": db, "Description": "to the database"}]},
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
         "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "https out"}]},
    ])
    ec2.authorize_security_group_ingress(GroupId=db, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
         "UserIdGroupPairs": [{"GroupId": api, "Description": "from the API"}]},
        {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1,
         "IpRanges": [{"CidrIp": "10.20.0.0/16", "Description": "ping"}]},
    ])
    ec2.revoke_security_group_egress(GroupId=mon, IpPermissions=[
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    ec2.authorize_security_group_egress(GroupId=mon, IpPermissions=[
        {"IpProtocol": "udp", "FromPort": 8125, "ToPort": 8125,
         "IpRanges": [{"CidrIp": "10.20.9.0/24", "Description": "statsd"}]}])
    ec2.authorize_security_group_ingress(GroupId=batch, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "10.20.0.0/16", "Description": "ssh"}]}])

    instance = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro",
        SubnetId=subnets["app-a"], SecurityGroupIds=[batch],
    )["Instances"][0]["InstanceId"]
    endpoint = ec2.create_vpc_endpoint(
        VpcId=vpc, ServiceName="com.amazonaws.us-east-1.secretsmanager",
        VpcEndpointType="Interface", SubnetIds=[subnets["app-a"]], SecurityGroupIds=[eps],
    )["VpcEndpoint"]["VpcEndpointId"]

    role = iam.create_role(
        RoleName="estate-lambda",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
             "Action": "sts:AssumeRole"}]}),
    )["Role"]["Arn"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("index.py", "def handler(event, context):\n    return 'ok'\n")
    code = buf.getvalue()
    kinds = [
        ("orders-api", {"app": "orders", "tier": "api"}, [api, mon]),
        ("orders-db", {"app": "orders", "tier": "db"}, [db, mon]),
        ("batch", {"app": "batch"}, [batch, mon]),
    ]
    functions = []
    for kind, tags, groups in kinds:
        for i in range(args.functions):
            name = f"{kind}-{i}"
            lam.create_function(
                FunctionName=name, Runtime="python3.12", Role=role, Handler="index.handler",
                Code={"ZipFile": code}, Tags=tags,
                VpcConfig={"SubnetIds": [subnets["app-a"], subnets["app-b"]],
                           "SecurityGroupIds": groups},
            )
            functions.append(name)
    print(json.dumps({
        "vpc": vpc, "subnets": subnets, "prefixList": office, "instance": instance,
        "endpoint": endpoint, "functions": functions,
        "groups": {"orders-api": api, "orders-db": db, "monitoring": mon, "batch": batch,
                   "endpoint-secrets": eps},
    }))


if __name__ == "__main__":
    main()
