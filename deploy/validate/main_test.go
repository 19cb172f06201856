package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rainbowBin: the binary the checks run; tests/run sets RAINBOW_BIN_DIR.
func rainbowBin(t *testing.T) string {
	dir := os.Getenv("RAINBOW_BIN_DIR")
	if dir == "" {
		t.Fatal("RAINBOW_BIN_DIR (the directory of the rainbow binary) is not set; tests/run sets it")
	}
	return filepath.Join(dir, "rainbow")
}

// copyDeploy copies ../../deploy into a new root, so that a mutation touches only the copy.
func copyDeploy(t *testing.T) string {
	root := t.TempDir()
	src, _ := filepath.Abs("../..")
	err := filepath.Walk(filepath.Join(src, "deploy"), func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(root, rel), 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(root, rel), data, info.Mode())
	})
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func TestTheManifestsPass(t *testing.T) {
	var out bytes.Buffer
	if failed := validate("../..", rainbowBin(t), &out); failed != 0 {
		t.Fatalf("%d checks failed:\n%s", failed, out.String())
	}
}

// Each mutation breaks one promise of the manifests; the checks must name it.
func TestMutationsAreCaught(t *testing.T) {
	cases := []struct {
		name, file, old, new, want string
	}{
		{"unknown setting", "deploy/compose/rainbow.env", "RAINBOW_LOG__FORMAT=json", "RAINBOW_LOG__FORMATT=json",
			"rainbow --print-config rejected it"},
		{"invalid value", "deploy/k8s/settings.yaml", `RAINBOW_POSTGRES__PORT: "5432"`, `RAINBOW_POSTGRES__PORT: "port"`,
			"rainbow --print-config rejected it"},
		{"unpinned image", "deploy/compose/compose.yaml", "prom/prometheus:v2.53.2", "prom/prometheus:latest",
			"image prom/prometheus:latest is pinned: not pinned"},
		{"unpinned base image", "deploy/docker/Dockerfile", "debian:12.12-slim", "debian",
			"image debian is pinned: not pinned"},
		{"unknown field", "deploy/k8s/api.yaml", "terminationGracePeriodSeconds: 40", "terminationGracePeriod: 40",
			"Deployment/rainbow-api decodes strictly"},
		{"compose schema", "deploy/compose/compose.yaml", "    ulimits:", "    ulimit:",
			"compose.yaml loads and validates"},
		{"scrape target off", "deploy/compose/prometheus.yml", `"cdc:9101"`, `"cdc:9111"`,
			"scraped by job rainbow-cdc"},
		{"wrong broker list", "deploy/compose/rainbow.env", "kafka-1:9092,kafka-2:9092,kafka-3:9092", "kafka-1:9092,kafka-2:9092",
			"kafka.brokers lists every broker"},
		{"replication factor above brokers", "deploy/k8s/settings.yaml", `RAINBOW_CDC__TOPIC_REPLICATION_FACTOR: "2"`, `RAINBOW_CDC__TOPIC_REPLICATION_FACTOR: "4"`,
			"topics have the brokers' partitions and replication factor"},
		{"processor replicas off its instances", "deploy/k8s/processor.yaml", "replicas: 3", "replicas: 2",
			"replicas equal processor.instances"},
		{"more instances than partitions", "deploy/k8s/settings.yaml", `RAINBOW_CDC__TOPIC_PARTITIONS: "3"`, `RAINBOW_CDC__TOPIC_PARTITIONS: "2"`,
			"at most the fact topics' partitions"},
		{"two compose instances with one number", "deploy/compose/compose.yaml", "RAINBOW_PROCESSOR__PARTITION: 1", "RAINBOW_PROCESSOR__PARTITION: 0",
			"the processor instances are 0..n-1"},
		{"no logical WAL", "deploy/k8s/postgres.yaml", `"wal_level=logical"`, `"wal_level=replica"`,
			"postgres runs with wal_level=logical"},
		{"no REST catalog for the tables in a bucket", "deploy/k8s/settings.yaml", "  RAINBOW_ARCHIVE__CATALOG_URL:", "  # RAINBOW_ARCHIVE__CATALOG_URL:",
			"archive.catalog_url is a REST catalog"},
		{"checkpoints off the volume", "deploy/k8s/processor.yaml", "mountPath: /data/processor", "mountPath: /data/elsewhere",
			"checkpoints on a volume"},
		{"bad replay arguments", "deploy/k8s/replay.yaml", `"--to", "2024-09-06"`, `"--to", "2024-09-31"`,
			"replay arguments parse"},
		{"bad compaction arguments", "deploy/k8s/archiver.yaml", `"--target-mb", "128"`, `"--target-mb", "128MiB"`,
			"archive compact arguments parse"},
		{"replay processes not indexed", "deploy/k8s/replay.yaml", "completionMode: Indexed", "completionMode: NonIndexed",
			"the replay's processes are an indexed Job's pods"},
		{"fewer pods than replay processes", "deploy/k8s/replay.yaml", "completions: 3", "completions: 2",
			"the replay's processes are an indexed Job's pods, one per process"},
		{"replay process not from the index", "deploy/k8s/replay.yaml", "fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']",
			"fieldPath: metadata.name", "each pod is the replay process of its completion index"},
		{"combine of other processes", "deploy/k8s/replay.yaml", `"--processes", "3", "--combine"`, `"--processes", "2", "--combine"`,
			"has a combine Job"},
		{"Superset off the warehouse", "deploy/k8s/superset.yaml", "svc.cluster.local:9000/rainbow", "svc.cluster.local:9000/default",
			"Superset queries the warehouse"},
		{"healthcheck off the port", "deploy/compose/compose.yaml", `"http://127.0.0.1:9101/readyz"`, `"http://127.0.0.1:9111/readyz"`,
			"cdc: healthcheck on its /readyz"},
		{"liveness on readiness", "deploy/k8s/processor.yaml", "httpGet: {path: /healthz, port: 9102}", "httpGet: {path: /readyz, port: 9102}",
			"livenessProbe on /healthz, port 9102"},
		{"readiness off", "deploy/k8s/api.yaml", "httpGet: {path: /readyz, port: 8080}", "httpGet: {path: /ping, port: 8080}",
			"readinessProbe on /readyz, port 8080"},
		{"service port missing", "deploy/k8s/clickhouse.yaml", "{name: http, port: 8123, targetPort: 8123}", "{name: http, port: 8124, targetPort: 8123}",
			"clickhouse at http://clickhouse.rainbow.svc.cluster.local:8123"},
	}
	bin := rainbowBin(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := copyDeploy(t)
			path := filepath.Join(root, c.file)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(data), c.old) {
				t.Fatalf("%s does not contain %q: the mutation is stale", c.file, c.old)
			}
			if err := os.WriteFile(path, []byte(strings.Replace(string(data), c.old, c.new, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			failed := validate(root, bin, &out)
			failures := []string{}
			for _, l := range strings.Split(out.String(), "\n") {
				if strings.HasPrefix(l, "FAIL") {
					failures = append(failures, l)
				}
			}
			if failed == 0 || !strings.Contains(strings.Join(failures, "\n"), c.want) {
				t.Fatalf("want a failure containing %q, got %d failures:\n%s", c.want, failed, strings.Join(failures, "\n"))
			}
		})
	}
}
