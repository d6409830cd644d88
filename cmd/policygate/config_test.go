package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// configFixtures is the fixture directory, relative to this package.
const configFixtures = "../../testdata/config"

// wantComment reads the "# want: <substring>" first line of an invalid
// fixture.
func wantComment(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		t.Fatalf("%s is empty", path)
	}
	want, ok := strings.CutPrefix(sc.Text(), "# want:")
	want = strings.TrimSpace(want)
	if !ok || want == "" {
		t.Fatalf("%s: first line %q is not \"# want: <expected error text>\"", path, sc.Text())
	}
	return want
}

func TestCheckValidConfig(t *testing.T) {
	path := filepath.Join(configFixtures, "valid.yaml")
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"check", "--config", path}, &out, &errOut); err != nil {
		t.Fatalf("check %s = %v\nstderr:\n%s", path, err, errOut.String())
	}
	if !strings.Contains(out.String(), "ok") {
		t.Errorf("stdout %q does not report ok", out.String())
	}
	if errOut.Len() != 0 {
		t.Errorf("stderr not empty:\n%s", errOut.String())
	}
}

// TestCheckInvalidConfigs runs check on every fixture under
// testdata/config/invalid: adding a fixture adds a case.
func TestCheckInvalidConfigs(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join(configFixtures, "invalid", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no invalid config fixtures found")
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".yaml"), func(t *testing.T) {
			want := wantComment(t, path)
			var out, errOut bytes.Buffer
			err := run(context.Background(), []string{"check", "--config", path}, &out, &errOut)
			if err == nil {
				t.Fatalf("check accepted %s:\n%s", path, out.String())
			}
			if err == errUsage {
				t.Fatalf("check %s = usage error, want a configuration error\n%s", path, errOut.String())
			}
			if !strings.Contains(errOut.String(), want) {
				t.Errorf("stderr does not contain %q:\n%s", want, errOut.String())
			}
			if strings.Contains(out.String(), "ok") {
				t.Errorf("stdout reports ok for an invalid config: %q", out.String())
			}
		})
	}
}

func TestCheckUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{name: "no config", args: []string{"check"}},
		{name: "extra argument", args: []string{"check", "--config", "a.yaml", "b.yaml"}},
		{name: "unknown flag", args: []string{"check", "--conf", "a.yaml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if err := run(context.Background(), tt.args, &out, &errOut); err != errUsage {
				t.Fatalf("run(%q) = %v, want the usage error", tt.args, err)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		var out, errOut bytes.Buffer
		path := filepath.Join(t.TempDir(), "absent.yaml")
		if err := run(context.Background(), []string{"check", "--config", path}, &out, &errOut); err == nil || !strings.Contains(errOut.String(), "absent.yaml") {
			t.Fatalf("check of a missing file = %v, stderr %q", err, errOut.String())
		}
	})
}
