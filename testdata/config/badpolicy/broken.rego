# Fixture for testdata/config/invalid/rego_compile_error.yaml: this module
# parses but does not compile (x is never bound).
package bad

decision := {"allow": allow}

allow if {
	x == input.request.method
}
