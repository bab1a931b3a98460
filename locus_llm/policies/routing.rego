# The default routing policy. Input and output contracts: DESIGN.md, "Contracts".
# Every rule adds violations {locus, reason}; a locus with none is allowed.
package locus.routing

import rego.v1

settings := data.routing_settings

rank(class) := settings.class_rank[class]

request_rank := rank(input.request.data_class)

# --- hard rules: sovereignty, credentials, health, fit ------------------------------------------

violations contains {"locus": name, "reason": msg} if {
	some name, locus in input.loci
	not zone_allowed(locus.zone)
	msg := sprintf("data class %s may not leave for zone %s", [input.request.data_class, locus.zone])
}

zone_allowed(zone) if zone in settings.zones_by_class[input.request.data_class]

violations contains {"locus": name, "reason": "no credentials"} if {
	some name, locus in input.loci
	locus.credentials == false
}

violations contains {"locus": name, "reason": "unhealthy (circuit open)"} if {
	some name, locus in input.loci
	locus.healthy == false
}

violations contains {"locus": name, "reason": msg} if {
	some name, locus in input.loci
	needed := input.request.tokens_in + input.request.tokens_out_est
	needed > locus.context_window
	msg := sprintf("context window %d < %d tokens needed", [locus.context_window, needed])
}

# --- cost cap ------------------------------------------------------------------------------------

predicted_cost(locus) := ((input.request.tokens_in * locus.usd_per_mtok_in) + (input.request.tokens_out_est * locus.usd_per_mtok_out)) / 1000000

violations contains {"locus": name, "reason": msg} if {
	cap := input.context.max_cost_usd
	is_number(cap)
	some name, locus in input.loci
	predicted_cost(locus) > cap
	msg := sprintf("predicted cost $%.6f over cap $%.6f", [predicted_cost(locus), cap])
}

# --- tenant budget: a paid locus needs money left, and a balance someone can vouch for ------------
# context.budget_state: "ok", "exceeded", or "unknown" (the shared state backend is unreachable:
# fail closed). A locus is paid when its zone is listed as paid or its predicted cost is above 0.

budget_state := object.get(input.context, "budget_state", "ok")

paid(locus) if locus.zone in object.get(settings, "paid_zones", ["cloud"])

paid(locus) if predicted_cost(locus) > 0

default budget_detail := ""

budget_detail := sprintf(": $%v of $%v spent", [input.context.spent_usd, input.context.budget_usd]) if {
	is_number(input.context.spent_usd)
	is_number(input.context.budget_usd)
}

violations contains {"locus": name, "reason": "tenant budget unknown (state backend unreachable)"} if {
	budget_state == "unknown"
	some name, locus in input.loci
	paid(locus)
}

violations contains {"locus": name, "reason": concat("", ["tenant budget exhausted", budget_detail])} if {
	budget_state == "exceeded"
	some name, locus in input.loci
	paid(locus)
}

violations contains {"locus": name, "reason": msg} if {
	budget_state == "ok"
	is_number(input.context.budget_usd)
	is_number(input.context.spent_usd)
	remaining := input.context.budget_usd - input.context.spent_usd
	some name, locus in input.loci
	predicted_cost(locus) > remaining
	msg := sprintf("tenant budget: predicted cost $%.6f over the $%.6f left", [predicted_cost(locus), remaining])
}

violations contains {"locus": name, "reason": msg} if {
	not budget_state in {"ok", "exceeded", "unknown"}
	some name, locus in input.loci
	paid(locus)
	msg := sprintf("tenant budget state %v not understood", [budget_state])
}

# --- latency budget: deny loci predicted to miss it, unless none would be left --------------------

predicted_latency_ms(locus) := locus.p50_ttft_ms + ((input.request.tokens_out_est * 1000) / locus.tokens_per_s)

hard_denied contains v.locus if some v in violations

meets_budget(locus) if predicted_latency_ms(locus) <= input.context.latency_budget_ms

some_locus_meets_budget if {
	some name, locus in input.loci
	not name in hard_denied
	meets_budget(locus)
}

latency_violations contains {"locus": name, "reason": msg} if {
	is_number(input.context.latency_budget_ms)
	some_locus_meets_budget
	some name, locus in input.loci
	not meets_budget(locus)
	msg := sprintf("predicted latency %.0f ms over budget %.0f ms", [predicted_latency_ms(locus), input.context.latency_budget_ms])
}

all_violations := violations | latency_violations

# --- obligations: INTERNAL data may reach the cloud only pseudonymised ----------------------------

redact_types contains e.type if {
	request_rank >= rank(settings.redact_from_class)
	some e in input.request.entities
}

# --- capability floor: the larger of the task's and the difficulty's ------------------------------

task_floor := object.get(settings.capability_floor.task, input.request.task, settings.capability_floor["default"])

difficulty_floor := max([step.floor |
	some step in settings.capability_floor.difficulty
	input.request.difficulty >= step.min
])

default capability_floor := 0

capability_floor := max([task_floor, difficulty_floor])

# --- the decision -------------------------------------------------------------------------------

denied := {name: reasons |
	some name, _ in input.loci
	reasons := sort([v.reason | some v in all_violations; v.locus == name])
	count(reasons) > 0
}

allowed := sort([name | some name, _ in input.loci; not denied[name]])

decision := {
	"allowed": allowed,
	"denied": denied,
	"obligations": {"redact": sort([t | some t in redact_types]), "redact_zones": settings.redact_zones},
	"capability_floor": capability_floor,
}
