#!/usr/bin/env python3
"""Make one AWS API call with boto3 and print the response as JSON: how the tests and
the demo change the emulated estate behind Palisade's back (drift).

    aws_call.py --endpoint URL SERVICE OPERATION '{"GroupId": "sg-…", …}'

OPERATION is boto3's snake_case name (authorize_security_group_ingress).
"""
import argparse
import json

import boto3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("service")
    ap.add_argument("operation")
    ap.add_argument("params", nargs="?", default="{}")
    args = ap.parse_args()
    client = boto3.client(
        args.service,
        region_name=args.region,
        endpoint_url=args.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    out = getattr(client, args.operation)(**json.loads(args.params))
    out.pop("ResponseMetadata", None)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
