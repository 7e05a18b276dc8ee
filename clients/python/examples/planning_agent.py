import sys
from fedgate_agent import Chain, Gateway

gateway = Gateway.from_env()  # the same variables, with planning/p1's SVID
chain = gateway.hold(Chain.parse(sys.stdin.read()))  # L0~L1 from the IdP: alice → this agent
reply = gateway.egress("POST", "/analytics/q3", "spiffe://vendor.example/agent/analytics/a1",
                       ["analytics:*"], chain, json={"quarter": "Q3"})
print(reply.status_code, reply.json()["report"]["holder"])
local = chain.extend("spiffe://company.com/agent/inventory/i1", ["analytics:run"], ttl="30m")
print(local.holder, local.scope, local.depth)
