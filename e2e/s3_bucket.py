"""What the storage suites do to a bucket, with boto3 as users would: `create BUCKET`,
`keys BUCKET` (one key per line), `put BUCKET KEY TEXT` and `public BUCKET` (a policy that lets
anyone read its objects over plain HTTP). The endpoint and credentials come
from the standard AWS_* variables."""

import json
import os
import sys

import boto3

s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
command, bucket, *rest = sys.argv[1:]
if command == "create":
    s3.create_bucket(Bucket=bucket)
elif command == "keys":
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    for page in pages:
        for item in page.get("Contents", []):
            print(item["Key"])
elif command == "put":
    key, text = rest
    s3.put_object(Bucket=bucket, Key=key, Body=text.encode())
elif command == "public":
    # AWS checks a HEAD as s3:GetObject; moto as s3:HeadObject.
    statement = {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:HeadObject"], "Resource": f"arn:aws:s3:::{bucket}/*"}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
else:
    sys.exit(f"unknown command {command}")
