// Command kstatus-check prints the kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status) result of
// Kubernetes objects, one JSON line per file: {"file": ..., "status": ..., "message": ...}.
// Flux's `wait: true` and `healthChecks` judge custom resources with this library, so the line
// says what Flux would report. Each file holds one object in YAML or JSON.
//
// Test infrastructure of imds-operator (tests/observability_files.rs); never part of the product.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type line struct {
	File    string `json:"file"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func compute(path string) (line, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return line{}, err
	}
	// Through JSON, so that integers stay int64 as they are in objects read from the API server.
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return line{}, fmt.Errorf("%s: %w", path, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		return line{}, fmt.Errorf("%s: %w", path, err)
	}
	res, err := status.Compute(u)
	if err != nil {
		return line{}, fmt.Errorf("%s: %w", path, err)
	}
	return line{File: path, Status: res.Status.String(), Message: res.Message}, nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kstatus-check FILE...")
		os.Exit(2)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, path := range os.Args[1:] {
		l, err := compute(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus-check:", err)
			os.Exit(1)
		}
		if err := enc.Encode(l); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus-check:", err)
			os.Exit(1)
		}
	}
}
