#!/usr/bin/env python3
"""Exits 0 once the Kafka broker at HOST:PORT answers a Metadata request listing a broker.

Used by infra/local/stack.sh to wait for the broker: an open port alone is not a broker that
serves (KRaft brokers open their listener before they are unfenced). Speaks the wire protocol
directly (Metadata v4, request header v1) so that waiting needs no client library.
"""
import socket
import struct
import sys

host, port = sys.argv[1], int(sys.argv[2])
client_id = b"shop-stack"
# api_key 3 (Metadata), version 4, correlation id 1, client id; topics [] (none), no auto-create.
body = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id + struct.pack(">i?", 0, False)
with socket.create_connection((host, port), timeout=3) as s:
    s.settimeout(3)
    s.sendall(struct.pack(">i", len(body)) + body)
    head = s.recv(4, socket.MSG_WAITALL)
    (size,) = struct.unpack(">i", head)
    resp = b""
    while len(resp) < size:
        chunk = s.recv(size - len(resp))
        if not chunk:
            sys.exit("connection closed")
        resp += chunk
corr, _throttle, brokers = struct.unpack(">iii", resp[:12])
sys.exit(0 if corr == 1 and brokers >= 1 else "no broker listed yet")
