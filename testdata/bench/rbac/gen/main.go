// Command gen writes the data document of the reference RBAC policy:
//
//	go run ./testdata/bench/rbac/gen -roles 50 -accounts 100 > testdata/bench/rbac/data.json
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/policygate/policygate/testdata/bench/rbac"
)

func main() {
	roles := flag.Int("roles", 50, "number of roles")
	accounts := flag.Int("accounts", 100, "number of service accounts")
	flag.Parse()
	if *roles < 0 || *accounts < 0 {
		fmt.Fprintln(os.Stderr, "gen: -roles and -accounts must not be negative")
		os.Exit(2)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(rbac.Data(*roles, *accounts)); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
