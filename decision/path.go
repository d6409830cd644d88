package decision

import (
	"fmt"
	"strings"
)

// RulePath normalizes a policy rule path to its "data.a.b" form. It accepts
// "a/b", "/a/b", "a.b" and "data.a.b"; every segment must be a Rego
// identifier, so a path can always be evaluated as a query.
func RulePath(s string) (string, error) {
	p := strings.TrimSpace(s)
	if p == "" {
		return "", fmt.Errorf("empty rule path")
	}
	var segs []string
	if strings.Contains(p, "/") {
		segs = strings.Split(strings.Trim(p, "/"), "/")
	} else {
		segs = strings.Split(p, ".")
	}
	if len(segs) > 0 && segs[0] == "data" {
		segs = segs[1:]
	}
	if len(segs) == 0 {
		return "", fmt.Errorf("rule path %q names no rule", s)
	}
	for _, seg := range segs {
		if !isIdent(seg) {
			return "", fmt.Errorf("rule path %q: segment %q is not an identifier", s, seg)
		}
	}
	return "data." + strings.Join(segs, "."), nil
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		letter := c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if !letter && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return true
}
