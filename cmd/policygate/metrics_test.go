package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestMetricsEndpoint checks that the admin listener serves the request
// metrics with the documented names and labels after real traffic.
func TestMetricsEndpoint(t *testing.T) {
	e := startSampleEnv(t)
	if r, _ := e.do(t, e.gw.URL, "GET", "/v1/service-accounts", bearer(saAuditor), ""); r.StatusCode != 200 {
		t.Fatalf("allowed call: %d", r.StatusCode)
	}
	if r, _ := e.do(t, e.gw.URL, "DELETE", "/v1/service-accounts/payments.deployer", bearer(saAuditor), ""); r.StatusCode != 403 {
		t.Fatalf("denied call: %d", r.StatusCode)
	}
	if r, _ := e.do(t, e.gw.URL, "GET", "/v1/../x", nil, ""); r.StatusCode != 400 {
		t.Fatalf("refused call: %d", r.StatusCode)
	}
	resp, err := http.Get(e.gw.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`policygate_requests_total{decision="allow",front_door="proxy",route="sampleapi",status="200"} 1`,
		`policygate_requests_total{decision="deny",front_door="proxy",route="sampleapi",status="403"} 1`,
		`policygate_requests_total{decision="refused",front_door="proxy",route="none",status="400"} 1`,
		`policygate_request_duration_seconds_count{front_door="proxy",route="sampleapi"} 2`,
		`policygate_upstream_duration_seconds_count{route="sampleapi"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
