# Unit tests for routing.rego: `locus policy test locus_llm/policies`.
package locus.routing

import rego.v1

loci := {
	"device": {"zone": "device", "capability": 1, "context_window": 8192, "healthy": true, "credentials": true, "p50_ttft_ms": 80, "tokens_per_s": 80, "usd_per_mtok_in": 0, "usd_per_mtok_out": 0},
	"onprem": {"zone": "onprem", "capability": 3, "context_window": 32768, "healthy": true, "credentials": true, "p50_ttft_ms": 200, "tokens_per_s": 60, "usd_per_mtok_in": 0.2, "usd_per_mtok_out": 0.2},
	"cloud": {"zone": "cloud", "capability": 5, "context_window": 128000, "healthy": true, "credentials": true, "p50_ttft_ms": 400, "tokens_per_s": 100, "usd_per_mtok_in": 2.5, "usd_per_mtok_out": 10},
}

request(class) := {"task": "open_qa", "difficulty": 0.1, "tokens_in": 100, "tokens_out_est": 100, "data_class": class, "entities": [], "flags": []}

context := {"tenant": "t", "latency_budget_ms": null, "max_cost_usd": null}

run(req) := d if {
	d := decision with input as {"request": req, "context": context, "loci": loci}
}

run_ctx(req, ctx) := d if {
	d := decision with input as {"request": req, "context": ctx, "loci": loci}
}

test_public_goes_anywhere if {
	run(request("PUBLIC")).allowed == ["cloud", "device", "onprem"]
}

test_internal_reaches_cloud_only_with_redaction if {
	req := object.union(request("INTERNAL"), {"entities": [{"type": "EMAIL_ADDRESS", "score": 0.9}]})
	d := run(req)
	"cloud" in d.allowed
	d.obligations.redact == ["EMAIL_ADDRESS"]
	d.obligations.redact_zones == ["cloud"]
}

test_public_has_no_redaction if {
	run(request("PUBLIC")).obligations.redact == []
}

test_confidential_stays_on_device_or_onprem if {
	d := run(request("CONFIDENTIAL"))
	d.allowed == ["device", "onprem"]
	d.denied.cloud == ["data class CONFIDENTIAL may not leave for zone cloud"]
}

test_restricted_stays_on_device if {
	d := run(request("RESTRICTED"))
	d.allowed == ["device"]
	count(d.denied) == 2
}

test_missing_credentials_denied if {
	d := decision with input as {"request": request("PUBLIC"), "context": context, "loci": object.union(loci, {"cloud": object.union(loci.cloud, {"credentials": false})})}
	d.denied.cloud == ["no credentials"]
}

test_unhealthy_denied if {
	d := decision with input as {"request": request("PUBLIC"), "context": context, "loci": object.union(loci, {"onprem": object.union(loci.onprem, {"healthy": false})})}
	d.denied.onprem == ["unhealthy (circuit open)"]
}

test_context_window_too_small_denied if {
	req := object.union(request("PUBLIC"), {"tokens_in": 20000})
	d := run(req)
	d.allowed == ["cloud", "onprem"]
	startswith(d.denied.device[0], "context window 8192")
}

test_latency_budget_denies_slow_loci if {
	# device: 80 + 100/80 s = 1330 ms; onprem: 200 + 1667 = 1867 ms; cloud: 400 + 1000 = 1400 ms
	d := run_ctx(request("PUBLIC"), object.union(context, {"latency_budget_ms": 1500}))
	d.allowed == ["cloud", "device"]
	startswith(d.denied.onprem[0], "predicted latency")
}

test_latency_budget_never_denies_everything if {
	d := run_ctx(request("PUBLIC"), object.union(context, {"latency_budget_ms": 10}))
	d.allowed == ["cloud", "device", "onprem"]
}

test_latency_budget_ignores_loci_denied_for_other_reasons if {
	# only cloud would meet 1400 ms, but cloud is denied for CONFIDENTIAL: keep the others
	d := run_ctx(request("CONFIDENTIAL"), object.union(context, {"latency_budget_ms": 1300}))
	d.allowed == ["device", "onprem"]
}

test_cost_cap_denies_expensive_loci if {
	# cloud: (100 * 2.5 + 100 * 10) / 1e6 = 0.00125 USD
	d := run_ctx(request("PUBLIC"), object.union(context, {"max_cost_usd": 0.001}))
	d.allowed == ["device", "onprem"]
	startswith(d.denied.cloud[0], "predicted cost")
}

test_capability_floor_from_task if {
	run(object.union(request("PUBLIC"), {"task": "code"})).capability_floor == 2
}

test_capability_floor_from_difficulty if {
	run(object.union(request("PUBLIC"), {"difficulty": 0.9})).capability_floor == 3
}

test_unknown_task_gets_strong_floor if {
	run(object.union(request("PUBLIC"), {"task": "unknown"})).capability_floor == 3
}

test_unlisted_task_gets_default_floor if {
	run(object.union(request("PUBLIC"), {"task": "poetry"})).capability_floor == 1
}

# --- tenant budget ---------------------------------------------------------------------------

budget(state, spent, limit) := object.union(context, {"budget_state": state, "spent_usd": spent, "budget_usd": limit})

test_budget_unknown_denies_paid_loci if {
	# the state backend is unreachable: fail closed for cloud and for any priced locus
	d := run_ctx(request("PUBLIC"), budget("unknown", null, 5))
	d.allowed == ["device"]
	d.denied.cloud == ["tenant budget unknown (state backend unreachable)"]
	d.denied.onprem == ["tenant budget unknown (state backend unreachable)"]
}

test_budget_unknown_denies_a_free_cloud_locus_too if {
	free_cloud := object.union(loci.cloud, {"usd_per_mtok_in": 0, "usd_per_mtok_out": 0})
	d := decision with input as {"request": request("PUBLIC"), "context": budget("unknown", null, 5), "loci": object.union(loci, {"cloud": free_cloud})}
	d.denied.cloud == ["tenant budget unknown (state backend unreachable)"]
}

test_budget_exceeded_denies_paid_loci if {
	d := run_ctx(request("PUBLIC"), budget("exceeded", 5.5, 5))
	d.allowed == ["device"]
	d.denied.cloud == ["tenant budget exhausted: $5.5 of $5 spent"]
}

test_budget_ok_allows_everything_affordable if {
	run_ctx(request("PUBLIC"), budget("ok", 1, 5)).allowed == ["cloud", "device", "onprem"]
}

test_budget_denies_a_locus_whose_predicted_cost_exceeds_what_is_left if {
	# cloud: (100 * 2.5 + 100 * 10) / 1e6 = $0.00125; onprem: $0.00004; $0.0001 left
	d := run_ctx(request("PUBLIC"), budget("ok", 4.9999, 5))
	d.allowed == ["device", "onprem"]
	startswith(d.denied.cloud[0], "tenant budget: predicted cost $0.001250 over the $0.000100 left")
}

test_no_budget_fields_change_nothing if {
	run(request("PUBLIC")).allowed == ["cloud", "device", "onprem"]
	run_ctx(request("PUBLIC"), budget("ok", null, null)).allowed == ["cloud", "device", "onprem"]
}

test_budget_state_misspelt_fails_closed if {
	d := run_ctx(request("PUBLIC"), budget("fine", 0, 5))
	d.allowed == ["device"]
}

test_budget_and_sovereignty_reasons_accumulate if {
	d := run_ctx(request("CONFIDENTIAL"), budget("unknown", null, 5))
	d.allowed == ["device"]
	count(d.denied.cloud) == 2
}
