package log_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
	decisionlog "github.com/policygate/policygate/decision/log"
	"github.com/policygate/policygate/testdata/bench/rbac"
)

// BenchmarkLog measures Log from parallel callers, as request goroutines
// call it: durable delivery pays the spool write (group-committed) before
// returning.
func BenchmarkLog(b *testing.B) {
	for _, bc := range []struct {
		name string
		cfg  func(dir string) decisionlog.Config
	}{
		{"backpressure/file", func(dir string) decisionlog.Config {
			return decisionlog.Config{Output: "file", Path: filepath.Join(dir, "d.jsonl")}
		}},
		{"durable/file/fsync=interval", func(dir string) decisionlog.Config {
			return decisionlog.Config{Output: "file", Path: filepath.Join(dir, "d.jsonl"), Delivery: "durable", SpoolDir: filepath.Join(dir, "spool")}
		}},
		{"durable/file/fsync=always", func(dir string) decisionlog.Config {
			return decisionlog.Config{Output: "file", Path: filepath.Join(dir, "d.jsonl"), Delivery: "durable", SpoolDir: filepath.Join(dir, "spool"), Fsync: "always"}
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l, err := decisionlog.New(bc.cfg(b.TempDir()), decisionlog.Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := l.Log(context.Background(), simpleEvent("bench")); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			if err := l.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkEncode is the per-request work Log does on the caller's
// goroutine: building the event from the decision, masking and encoding it,
// for the reference RBAC mix (a GET, and a POST with a JSON body). "masked"
// is the same with a mask path from the policy, which takes the general
// path: the input copied, erased, then encoded.
func BenchmarkEncode(b *testing.B) {
	l, err := decisionlog.New(decisionlog.Config{Output: "stdout"}, decisionlog.Options{CheckOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range []rbac.Request{rbac.Mix[0], rbac.Mix[3]} {
		d := &decision.Decision{
			ID: "0123456789abcdef0123456789abcdef", Path: rbac.RulePath, Input: rbac.Input(r, "0123456789abcdef0123456789abcdef"),
			Result:    decision.Result{Allow: true, Outcome: decision.OutcomeAllow, Raw: map[string]any{"allow": true}},
			Bundles:   map[string]string{"rbac": "bench-rev"},
			Timestamp: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC), EvalTime: 41 * time.Microsecond,
		}
		c := decision.Completion{Status: 200, UpstreamStatus: 200, UpstreamLatency: 90 * time.Microsecond, Latency: 180 * time.Microsecond}
		masked := *d
		masked.Result.Mask = []string{"input.request.body.name"}
		for _, v := range []struct {
			name string
			d    *decision.Decision
		}{{"", d}, {"/masked", &masked}} {
			b.Run(r.Method+v.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := l.Encode(decision.NewEvent(v.d, c)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
