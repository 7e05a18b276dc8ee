# The delegation rule of the zero-trust article, rewritten in Rego v1 as a gateway-local
# fedgate policy. fedgate evaluates `data.fedgate.deny` after the agreement allows a crossing;
# every message in the set denies it with reason `policy_denied`.
#
# Input (see fedgate::agreement::rego::crossing_input): input.source / input.target,
# input.scopes.{requested,granted,held}, input.chain.{principal,task,depth,agents,expires_ns},
# input.time.now_ns. Time is an input, so the decision is a pure function of it.
package fedgate

# Maximum delegation chain depth (links before this crossing).
max_chain_length := 5

default allow_delegation := false

allow_delegation if {
	delegator_authorized
	scope_is_subset(input.scopes.requested, input.scopes.held)
	input.chain.depth < max_chain_length
	input.time.now_ns < input.chain.expires_ns
}

# The delegator is an agent identified by a SPIFFE ID, acting for a known task.
delegator_authorized if {
	startswith(input.source, "spiffe://")
	contains(input.source, "/agent/")
	input.chain.task != ""
}

# Scope coverage as fedgate defines it: equal, or a trailing-* prefix pattern.
covers(held, wanted) if held == wanted

covers(held, wanted) if {
	endswith(held, "*")
	startswith(trim_suffix(wanted, "*"), trim_suffix(held, "*"))
}

scope_is_subset(requested, held) if {
	every s in requested {
		some h in held
		covers(h, s)
	}
}

deny contains "delegator is not an authorized agent" if not delegator_authorized

deny contains msg if {
	some s in input.scopes.requested
	not any_covers(s)
	msg := sprintf("scope %s is not within the delegator's scope", [s])
}

any_covers(s) if {
	some h in input.scopes.held
	covers(h, s)
}

deny contains msg if {
	input.chain.depth >= max_chain_length
	msg := sprintf("chain depth %d reaches the maximum of %d", [input.chain.depth, max_chain_length])
}

deny contains "delegation expired" if input.time.now_ns >= input.chain.expires_ns
