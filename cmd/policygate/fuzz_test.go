package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

// echoUpstream compares what it received with what the policy saw (passed
// in X-Policy-* headers by the echo rule) and answers 200 on a match, 520
// with the difference otherwise.
func echoUpstream(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mismatch := func(format string, args ...any) {
			w.WriteHeader(520)
			fmt.Fprintf(w, format, args...)
		}
		path, rawQuery, _ := strings.Cut(r.RequestURI, "?")
		if want := r.Header.Get("X-Policy-Path"); path != want {
			mismatch("path: upstream %q, policy %q", path, want)
			return
		}
		if r.Method != r.Header.Get("X-Policy-Method") {
			mismatch("method: upstream %q, policy %q", r.Method, r.Header.Get("X-Policy-Method"))
			return
		}
		segs := []string{}
		for _, raw := range strings.Split(path, "/") {
			if raw == "" {
				continue
			}
			s, err := url.PathUnescape(raw)
			if err != nil {
				mismatch("unescape %q: %v", raw, err)
				return
			}
			segs = append(segs, s)
		}
		var policySegs []string
		_ = json.Unmarshal([]byte(r.Header.Get("X-Policy-Segments")), &policySegs)
		if !reflect.DeepEqual(segs, policySegs) {
			mismatch("segments: upstream %q, policy %q", segs, policySegs)
			return
		}
		q, err := url.ParseQuery(rawQuery)
		if err != nil {
			mismatch("query %q: %v", rawQuery, err)
			return
		}
		var policyQuery url.Values
		_ = json.Unmarshal([]byte(r.Header.Get("X-Policy-Query")), &policyQuery)
		if len(q)+len(policyQuery) > 0 && !reflect.DeepEqual(q, policyQuery) {
			mismatch("query: upstream %v, policy %v", q, policyQuery)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func echoConfig(upstream, policyDir string) string {
	return fmt.Sprintf(`server:
  listen: 127.0.0.1:0
policy:
  dir: %s
routes:
  - name: all
    path_prefix: /
    upstream: %s
    policy: faults/echo
    allow_encoded_slash: true
decision_log:
  output: file
  path: LOGFILE
`, policyDir, upstream)
}

// FuzzProxyPath holds, for any request the gateway accepts, that the path,
// segments, query and method the policy saw are exactly what the upstream
// received, through the real server and a real upstream.
func FuzzProxyPath(f *testing.F) {
	up := echoUpstream(f)
	g := startGateway(f, echoConfig(up.URL, repoPath(f, "testdata/security/policy")), nil)
	addr := strings.TrimPrefix(g.URL, "http://")
	for _, s := range []string{"/", "/a/b", "//admin", "/public/../admin", "/p/%2e%2e/a", "/a?x=1&x=2&y=%20",
		"/api/permissions/%2F/u", "/a%3Bb", "/a/%c3%a9?q=%2F", "/a/./b", "/%41%42/", "/a?b", "/a+b?c+d=e+f", "/~user/@x:y"} {
		f.Add("GET", s)
	}
	f.Add("DELETE", "/api/users/ci%2Dnew")
	f.Fuzz(func(t *testing.T, method, target string) {
		if !validToken(method) || strings.ContainsAny(target, " \r\n") || target == "" || len(target) > 4096 {
			t.Skip("not an HTTP/1.1 request line")
		}
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n", method, target)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s %q: no response: %v", method, target, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case 520:
			t.Fatalf("%s %q: policy and upstream disagree: %s", method, target, body)
		case http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusRequestURITooLong, http.StatusNotImplemented:
		default:
			if resp.StatusCode >= 500 {
				t.Fatalf("%s %q: status %d: %s", method, target, resp.StatusCode, body)
			}
		}
	})
}

func validToken(s string) bool {
	if s == "" || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}
