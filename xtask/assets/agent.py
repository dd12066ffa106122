"""A stand-in for an AI agent's tool calls: unmodified Python, plain sockets and `requests`.

It knows nothing about react-gateway; the kernel sends its connections through the proxy.
"""
import json
import socket
import sys

import requests

tools_v4, tools_v6 = sys.argv[1], sys.argv[2]

# A tool call over `requests` (what most agent frameworks use underneath).
r = requests.get(f"http://{tools_v4}/v1/tools/weather?city=Paris", timeout=5)
print(f"  agent: GET http://{tools_v4}/v1/tools/weather -> {r.status_code} {r.json()}")

# The same over IPv6.
host, port = tools_v6.rsplit(":", 1)
r = requests.post(f"http://{tools_v6}/v1/tools/search", json={"q": "eBPF"}, timeout=5)
print(f"  agent: POST http://{tools_v6}/v1/tools/search -> {r.status_code} {r.json()}")

# A raw socket: getpeername() shows the original destination, not the proxy.
h, p = tools_v4.split(":")
with socket.create_connection((h, int(p)), timeout=5) as s:
    print(f"  agent: raw socket to {tools_v4}: getpeername() = {s.getpeername()}")
    s.sendall(b"GET /health HTTP/1.0\r\nHost: tools\r\n\r\n")
    first_line = s.recv(64).split(b"\r\n")[0].decode()
    print(f"  agent: first response line: {first_line}")
