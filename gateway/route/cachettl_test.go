package route_test

import (
	"strings"
	"testing"
	"time"

	"github.com/policygate/policygate/gateway/route"
)

func TestCacheTTL(t *testing.T) {
	tests := []struct {
		ttl     string
		want    time.Duration
		wantErr string
	}{
		{ttl: "", want: 0},
		{ttl: "0s", want: 0},
		{ttl: "30s", want: 30 * time.Second},
		{ttl: "24h", want: 24 * time.Hour},
		{ttl: "-1s", wantErr: "routes[0].cache_ttl"},
		{ttl: "25h", wantErr: "routes[0].cache_ttl"},
		{ttl: "soon", wantErr: "routes[0].cache_ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.ttl, func(t *testing.T) {
			c := rc("api", "", "/api")
			c.CacheTTL = tt.ttl
			table, err := route.New([]route.Config{c}, route.Options{Getenv: noEnv})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New(cache_ttl %q) = %v, want an error naming %s", tt.ttl, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if got := table.Routes()[0].CacheTTL; got != tt.want {
				t.Fatalf("CacheTTL = %v, want %v", got, tt.want)
			}
		})
	}
}
