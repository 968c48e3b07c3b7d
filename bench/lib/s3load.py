"""Load for bench/buckets.sh, through boto3 against an S3 endpoint (moto on loopback).
  s3load.py ENDPOINT BUCKET fill N SIZE [PREFIX]   create the bucket if needed, upload N objects of SIZE bytes (16 threads)
  s3load.py ENDPOINT BUCKET big COUNT MiB          upload COUNT objects of MiB each
  s3load.py ENDPOINT BUCKET steady SECONDS EVERY_MS SIZE   one object every EVERY_MS for SECONDS
  s3load.py ENDPOINT BUCKET count                  print the number of objects and their bytes"""
import concurrent.futures
import os
import sys
import time

import boto3

endpoint, bucket, what = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
try:
    s3.create_bucket(Bucket=bucket)
except Exception:
    pass

if what == "fill":
    n, size = int(sys.argv[4]), int(sys.argv[5])
    prefix = sys.argv[6] if len(sys.argv) > 6 else "obj"
    body = os.urandom(size)

    def one(i):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{i:07d}", Body=body[i % 7:] + body[:i % 7], ContentType="application/octet-stream")

    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        list(ex.map(one, range(n)))
elif what == "big":
    count, mib = int(sys.argv[4]), int(sys.argv[5])
    for i in range(count):
        s3.put_object(Bucket=bucket, Key=f"big/{i}.bin", Body=os.urandom(mib * 1024 * 1024))
elif what == "steady":
    secs, every, size = float(sys.argv[4]), int(sys.argv[5]) / 1000, int(sys.argv[6])
    end = time.time() + secs
    i = 0
    while time.time() < end:
        t = time.time()
        s3.put_object(Bucket=bucket, Key=f"steady/{i:06d}", Body=os.urandom(size))
        i += 1
        time.sleep(max(0, every - (time.time() - t)))
    print(i)
elif what == "count":
    n = b = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            n += 1
            b += o["Size"]
    print(n, b)
