package log_test

import (
	"context"
	"path/filepath"
	"testing"

	decisionlog "github.com/policygate/policygate/decision/log"
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
