"""The client of bench/appfailover.sh: every 20 ms, resolve NAME at the DNS responder (no cache)
and GET / from the address it answers. Waits for the file GO, notes its time, then prints
(as JSON) how long after it the name first answered WANT and the first GET through the name
succeeded at that address. Usage: appclient.py DNS_PORT NAME WANT HTTP_PORT GO_FILE"""
import http.client
import json
import os
import random
import socket
import struct
import sys
import time

dns_port, name, want, http_port, go = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]


def resolve():
    qid = random.randint(0, 65535)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        s.sendto(q, ("127.0.0.1", dns_port))
        r, _ = s.recvfrom(1500)
    except OSError:
        return None
    finally:
        s.close()
    if struct.unpack(">H", r[:2])[0] != qid or r[3] & 0x0F != 0 or struct.unpack(">H", r[6:8])[0] == 0:
        return None
    # The answer's RDATA is the last four bytes for a single A record.
    return socket.inet_ntoa(r[-4:])


def get(addr):
    try:
        c = http.client.HTTPConnection(addr, http_port, timeout=0.2)
        c.request("GET", "/")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


while not os.path.exists(go):
    time.sleep(0.005)
t0 = os.stat(go).st_mtime
dns_at = http_at = None
deadline = time.time() + 120
while time.time() < deadline and (dns_at is None or http_at is None):
    addr = resolve()
    now = time.time()
    if addr == want and dns_at is None:
        dns_at = now - t0
    if addr == want and http_at is None and get(addr):
        http_at = time.time() - t0
    time.sleep(0.02)
print(json.dumps({"dns_s": dns_at, "http_s": http_at}))
