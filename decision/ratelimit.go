package decision

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
)

// RateLimit is one limit a decision asks the gateway to enforce on the
// request, from the decision's rate_limit field:
//
//	rate_limit: [{key: "caller:alice", limit: 10, period: "1m", burst: 10, cost: 1}]
//
// At most Limit units are admitted per Period under Key, at a steady rate of
// Limit/Period; a caller that has been quiet may spend up to Burst units at
// once. Every request spends Cost units. All limits of one request are
// checked together: a request rejected by one of them spends nothing from
// the others.
type RateLimit struct {
	// Key names the budget, e.g. "caller:alice" or "group:ci". Requests
	// with the same key (and the same Limit and Period) share it.
	Key string
	// Limit is the number of units admitted per Period. Positive.
	Limit int64
	// Period is the window of Limit, a whole number of milliseconds.
	Period time.Duration
	// Burst is the most units admitted at once. 0 or absent in the
	// decision means Limit. Never below Cost.
	Burst int64
	// Cost is the number of units this request spends. 0 or absent in the
	// decision means 1.
	Cost int64
}

// Bounds on rate-limit values, so that one malformed decision cannot make
// the limiter's arithmetic overflow or its state unbounded.
const (
	// MaxRateLimits is the most limits one decision may carry.
	MaxRateLimits = 16
	// MaxRateLimitKey is the longest key, in bytes.
	MaxRateLimitKey = 512
	// MaxRateLimitValue bounds limit, burst and cost.
	MaxRateLimitValue = 1_000_000_000
	// MaxRateLimitPeriod is the longest period.
	MaxRateLimitPeriod = 366 * 24 * time.Hour
	// maxDebt bounds burst × period / limit: the longest a key can stay
	// in debt (about 31 years), far below int64 nanoseconds.
	maxDebt = float64(1e18)
)

// ParseRateLimits interprets the decision's rate_limit field: an array of
// objects with key (string), limit (integer), period (a Go duration string
// such as "1m", or a number of seconds), and optional burst and cost
// (integers). Numbers may be json.Number, float64 or Go integers. An empty
// array yields no limits. Anything malformed is an error naming the entry
// and field; the caller must deny, as for any malformed decision.
func ParseRateLimits(v any) ([]RateLimit, error) {
	items, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("decision: rate_limit is %T, want array of objects", v)
	}
	if len(items) > MaxRateLimits {
		return nil, fmt.Errorf("decision: rate_limit has %d entries, at most %d are allowed", len(items), MaxRateLimits)
	}
	if len(items) == 0 {
		return nil, nil
	}
	out := make([]RateLimit, 0, len(items))
	var errs []error
	for i, item := range items {
		m, isObj := item.(map[string]any)
		if !isObj {
			errs = append(errs, fmt.Errorf("decision: rate_limit[%d]: is %T, want object", i, item))
			continue
		}
		rl, err := parseRateLimit(m)
		if err != nil {
			errs = append(errs, fmt.Errorf("decision: rate_limit[%d].%w", i, err))
			continue
		}
		out = append(out, rl)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

var rateLimitFields = map[string]bool{"key": true, "limit": true, "period": true, "burst": true, "cost": true}

func parseRateLimit(m map[string]any) (RateLimit, error) {
	for k := range m {
		// A misspelled "burts" or "periode" would otherwise silently
		// enforce a different limit than the policy author meant.
		if !rateLimitFields[k] {
			return RateLimit{}, fmt.Errorf("%s: unknown field (want key, limit, period, burst, cost)", k)
		}
	}
	var rl RateLimit
	switch k := m["key"].(type) {
	case string:
		if k == "" {
			return RateLimit{}, errors.New("key: must not be empty")
		}
		if len(k) > MaxRateLimitKey {
			return RateLimit{}, fmt.Errorf("key: %d bytes, at most %d", len(k), MaxRateLimitKey)
		}
		rl.Key = k
	case nil:
		return RateLimit{}, errors.New("key: required")
	default:
		return RateLimit{}, fmt.Errorf("key: is %T, want string", k)
	}
	var err error
	if rl.Limit, err = rateInt(m, "limit", true); err != nil {
		return RateLimit{}, err
	}
	if rl.Limit == 0 {
		return RateLimit{}, errors.New("limit: must be positive")
	}
	if rl.Period, err = ratePeriod(m["period"]); err != nil {
		return RateLimit{}, fmt.Errorf("period: %w", err)
	}
	if rl.Burst, err = rateInt(m, "burst", false); err != nil {
		return RateLimit{}, err
	}
	if rl.Cost, err = rateInt(m, "cost", false); err != nil {
		return RateLimit{}, err
	}
	if rl.Burst == 0 {
		rl.Burst = rl.Limit
	}
	if rl.Cost == 0 {
		rl.Cost = 1
	}
	if err := rl.Validate(); err != nil {
		return RateLimit{}, err
	}
	return rl, nil
}

// Validate checks a RateLimit with its defaults applied. Errors name the
// offending field.
func (rl RateLimit) Validate() error {
	switch {
	case rl.Key == "":
		return errors.New("key: must not be empty")
	case len(rl.Key) > MaxRateLimitKey:
		return fmt.Errorf("key: %d bytes, at most %d", len(rl.Key), MaxRateLimitKey)
	case rl.Limit <= 0 || rl.Limit > MaxRateLimitValue:
		return fmt.Errorf("limit: %d is not in 1..%d", rl.Limit, MaxRateLimitValue)
	case rl.Period < time.Millisecond || rl.Period > MaxRateLimitPeriod:
		return fmt.Errorf("period: %s is not in 1ms..%s", rl.Period, MaxRateLimitPeriod)
	case rl.Period%time.Millisecond != 0:
		return fmt.Errorf("period: %s is not a whole number of milliseconds", rl.Period)
	case rl.Burst <= 0 || rl.Burst > MaxRateLimitValue:
		return fmt.Errorf("burst: %d is not in 1..%d", rl.Burst, MaxRateLimitValue)
	case rl.Cost <= 0 || rl.Cost > MaxRateLimitValue:
		return fmt.Errorf("cost: %d is not in 1..%d", rl.Cost, MaxRateLimitValue)
	case rl.Cost > rl.Burst:
		return fmt.Errorf("cost: %d exceeds burst %d, so the request could never be admitted", rl.Cost, rl.Burst)
	case float64(rl.Burst)*float64(rl.Period)/float64(rl.Limit) > maxDebt:
		return fmt.Errorf("burst: %d × period %s / limit %d is too long a debt", rl.Burst, rl.Period, rl.Limit)
	}
	return nil
}

// rateInt reads a non-negative integer field; absent is 0.
func rateInt(m map[string]any, key string, required bool) (int64, error) {
	v, ok := m[key]
	if !ok {
		if required {
			return 0, fmt.Errorf("%s: required", key)
		}
		return 0, nil
	}
	f, err := rateNumber(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	if f != math.Trunc(f) || f < 0 || f > MaxRateLimitValue {
		return 0, fmt.Errorf("%s: %v is not an integer in 0..%d", key, v, MaxRateLimitValue)
	}
	return int64(f), nil
}

// ratePeriod reads a Go duration string or a number of seconds.
func ratePeriod(v any) (time.Duration, error) {
	var d time.Duration
	switch t := v.(type) {
	case nil:
		return 0, errors.New("required")
	case string:
		if strings.TrimSpace(t) != t || t == "" {
			return 0, fmt.Errorf("%q is not a duration", t)
		}
		p, err := time.ParseDuration(t)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration such as \"1m\"", t)
		}
		d = p
	default:
		secs, err := rateNumber(v)
		if err != nil {
			return 0, fmt.Errorf("%v (%T) is not a duration string or a number of seconds", v, v)
		}
		if !(secs > 0 && secs <= MaxRateLimitPeriod.Seconds()) {
			return 0, fmt.Errorf("%v seconds is not in (0, %v]", v, MaxRateLimitPeriod.Seconds())
		}
		d = time.Duration(math.Round(secs * float64(time.Second)))
	}
	if d <= 0 {
		return 0, fmt.Errorf("%v must be positive", v)
	}
	return d, nil
}

// rateNumber accepts the number types a policy result may hold.
func rateNumber(v any) (float64, error) {
	switch n := v.(type) {
	case float64:
		return n, nil
	case int:
		return float64(n), nil
	case int64:
		return float64(n), nil
	case interface{ Float64() (float64, error) }: // json.Number
		f, err := n.Float64()
		if err != nil {
			return 0, fmt.Errorf("%v is not a number", v)
		}
		return f, nil
	}
	return 0, fmt.Errorf("is %T, want number", v)
}
