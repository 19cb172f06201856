// Command validate checks the deploy manifests that cannot run on the development machine (it has
// no Docker engine and no Kubernetes cluster) as far as tools without them allow:
//
//   - deploy/compose/compose.yaml is loaded by compose-go, the library `docker compose` itself uses:
//     schema validation, interpolation, merge keys, env_file resolution;
//   - deploy/k8s is built by kustomize's library (what `kubectl kustomize` runs) and every object
//     is decoded strictly into the Kubernetes API types (unknown or mistyped fields fail);
//   - every image (and every FROM of deploy/*/Dockerfile) is pinned to a version tag;
//   - every Rainbow container's environment (the image's ENV, then env_file/ConfigMap/Secret, then
//     its own variables) is loaded by the real binary with `rainbow --print-config`, which rejects
//     unknown variables and invalid values; the resolved settings must then agree with the other
//     services: hosts and ports of PostgreSQL, Kafka and ClickHouse, Kafka's partitions and
//     replication factor, listen ports against container ports and Prometheus scrape targets,
//     state directories on volumes, a replay's processes as an indexed Job's pods (each its
//     completion index) with a Job that combines their outputs.
//
// Usage: go run ./deploy/validate -rainbow target/debug/rainbow [-root .]
// Prints one line per check and exits 1 when any fails.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/loader"
	ctypes "github.com/compose-spec/compose-go/v2/types"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	ktypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// settings is the part of `rainbow --print-config` the cross-checks read.
type settings struct {
	Postgres struct {
		Host string `toml:"host"`
		Port int    `toml:"port"`
	} `toml:"postgres"`
	Kafka struct {
		Brokers string `toml:"brokers"`
	} `toml:"kafka"`
	ClickHouse struct {
		URL      string `toml:"url"`
		Database string `toml:"database"`
	} `toml:"clickhouse"`
	API struct {
		Listen string `toml:"listen"`
	} `toml:"api"`
	CDC struct {
		TopicPartitions        int    `toml:"topic_partitions"`
		TopicReplicationFactor int    `toml:"topic_replication_factor"`
		OffsetsDir             string `toml:"offsets_dir"`
		MetricsListen          string `toml:"metrics_listen"`
	} `toml:"cdc"`
	Processor struct {
		MetricsListen string `toml:"metrics_listen"`
		CheckpointURL string `toml:"checkpoint_url"`
		Partition     int    `toml:"partition"`
		Instances     int    `toml:"instances"`
	} `toml:"processor"`
	Archive struct {
		MetricsListen string `toml:"metrics_listen"`
		CatalogURL    string `toml:"catalog_url"`
	} `toml:"archive"`
	Storage struct {
		URL string `toml:"url"`
	} `toml:"storage"`
	Replay struct {
		Processes int `toml:"processes"`
	} `toml:"replay"`
}

type report struct {
	out            io.Writer
	passed, failed int
}

func (r *report) check(what string, err error) bool {
	if err != nil {
		r.failed++
		fmt.Fprintf(r.out, "FAIL  %s: %v\n", what, err)
		return false
	}
	r.passed++
	fmt.Fprintf(r.out, "ok    %s\n", what)
	return true
}

func (r *report) expect(what string, ok bool, format string, args ...any) bool {
	if ok {
		return r.check(what, nil)
	}
	return r.check(what, fmt.Errorf(format, args...))
}

// shellRole: the rainbow command a shell line runs (`... exec rainbow process`).
var shellRole = regexp.MustCompile(`\brainbow ([a-z]+)`)

var pinned = regexp.MustCompile(`^[a-z0-9./_-]+:v?[0-9]+(\.[0-9]+)+[A-Za-z0-9._-]*$`)

// checkPinned: a version tag (digits and dots, optional suffix); no `latest`, no bare name.
func checkPinned(r *report, where, image string) {
	r.expect(fmt.Sprintf("%s: image %s is pinned", where, image), pinned.MatchString(image),
		"not pinned to a version tag (want name:1.2.3)")
}

// rainbowEnv runs the real binary on an environment and parses what it resolved.
func rainbowEnv(bin string, env map[string]string) (settings, error) {
	var s settings
	cmd := exec.Command(bin, "--print-config")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Dir = os.TempDir() // no ./rainbow.toml of the repository
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return s, fmt.Errorf("rainbow --print-config rejected it: %v: %s", err, strings.TrimSpace(errb.String()))
	}
	_, err := toml.Decode(out.String(), &s)
	return s, err
}

// dockerfileEnv reads the ENV instruction(s) of a Dockerfile (KEY=VALUE form).
func dockerfileEnv(path string) (map[string]string, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	env := map[string]string{}
	var froms []string
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "ENV":
			for _, kv := range f[1:] {
				if k, v, ok := strings.Cut(kv, "="); ok {
					env[k] = v
				}
			}
		case "FROM":
			froms = append(froms, f[1])
		}
	}
	return env, froms, nil
}

func hostPort(addr string) (string, int, error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return "", 0, fmt.Errorf("%q has no port", addr)
	}
	p, err := strconv.Atoi(addr[i+1:])
	return addr[:i], p, err
}

func urlHostPort(u string) (string, int, error) {
	parsed, err := url.Parse(u)
	if err != nil {
		return "", 0, err
	}
	return hostPort(parsed.Host)
}

// under: whether path is at or below one of the mount points.
func under(path string, mounts []string) bool {
	for _, m := range mounts {
		if path == m || strings.HasPrefix(path, strings.TrimSuffix(m, "/")+"/") {
			return true
		}
	}
	return false
}

func scrapeTargets(promYAML []byte) (map[string][]string, error) {
	var cfg struct {
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
			KubernetesSD []any `json:"kubernetes_sd_configs"`
			Relabel      []struct {
				Regex string `json:"regex"`
			} `json:"relabel_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.Unmarshal(promYAML, &cfg); err != nil {
		return nil, err
	}
	jobs := map[string][]string{}
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			jobs[sc.JobName] = append(jobs[sc.JobName], st.Targets...)
		}
		if len(sc.KubernetesSD) > 0 {
			for _, rl := range sc.Relabel {
				jobs[sc.JobName] = append(jobs[sc.JobName], "service:"+rl.Regex)
			}
		}
	}
	return jobs, nil
}

// The Prometheus job of each service role (deploy/prometheus/rules.yml uses these names).
var jobOf = map[string]string{"api": "rainbow-api", "cdc": "rainbow-cdc", "process": "rainbow-processor", "archive": "rainbow-archive"}

func listenOf(role string, s settings) string {
	switch role {
	case "api":
		return s.API.Listen
	case "cdc":
		return s.CDC.MetricsListen
	case "process":
		return s.Processor.MetricsListen
	case "archive":
		return s.Archive.MetricsListen
	}
	return ""
}

// checkSupersetURI: Superset's SQLAlchemy URI names the warehouse the Rainbow services write:
// the ClickHouse host (hostOK), its native port 9000, and clickhouse.database.
func checkSupersetURI(r *report, where, uri string, hostOK func(string) bool, database string) {
	u, err := url.Parse(uri)
	if err == nil && (u.Scheme != "clickhouse+native" || !hostOK(u.Hostname()) || u.Port() != "9000" || u.Path != "/"+database) {
		err = fmt.Errorf("%q is not clickhouse+native://<the ClickHouse service>:9000/%s", uri, database)
	}
	r.check(where+": Superset queries the warehouse", err)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------- compose

func validateCompose(r *report, root, bin string, imageEnv map[string]string) {
	dir := filepath.Join(root, "deploy/compose")
	opts, err := cli.NewProjectOptions([]string{filepath.Join(dir, "compose.yaml")},
		cli.WithWorkingDirectory(dir), cli.WithProfiles([]string{"*"}),
		cli.WithLoadOptions(func(o *loader.Options) { o.SkipValidation = false }))
	if !r.check("compose: options", err) {
		return
	}
	p, err := opts.LoadProject(context.Background())
	if !r.check("compose: compose.yaml loads and validates (compose-go, the library of `docker compose`)", err) {
		return
	}
	names := make([]string, 0, len(p.Services))
	for n := range p.Services {
		names = append(names, n)
	}
	sort.Strings(names)

	byImage := func(prefix string) []string {
		var out []string
		for _, n := range names {
			if strings.HasPrefix(p.Services[n].Image, prefix) {
				out = append(out, n)
			}
		}
		return out
	}
	env := func(svc ctypes.ServiceConfig, k string) string {
		if v := svc.Environment[k]; v != nil {
			return *v
		}
		return ""
	}
	mounts := func(svc ctypes.ServiceConfig) []string {
		var m []string
		for _, v := range svc.Volumes {
			m = append(m, v.Target)
		}
		return m
	}

	for _, n := range names {
		checkPinned(r, "compose service "+n, p.Services[n].Image)
	}
	for _, n := range byImage("postgres:") {
		r.expect("compose: "+n+" runs with wal_level=logical",
			contains(p.Services[n].Command, "wal_level=logical"), "command %v", p.Services[n].Command)
	}
	kafkas := byImage("apache/kafka:")
	r.expect("compose: Kafka has 3 KRaft brokers", len(kafkas) == 3, "found %v", kafkas)
	brokersWant := []string{}
	for _, n := range kafkas {
		k := p.Services[n]
		brokersWant = append(brokersWant, n+":9092")
		r.expect("compose: "+n+" defaults to 3 partitions, replication factor 2",
			env(k, "KAFKA_NUM_PARTITIONS") == "3" && env(k, "KAFKA_DEFAULT_REPLICATION_FACTOR") == "2",
			"KAFKA_NUM_PARTITIONS=%s KAFKA_DEFAULT_REPLICATION_FACTOR=%s",
			env(k, "KAFKA_NUM_PARTITIONS"), env(k, "KAFKA_DEFAULT_REPLICATION_FACTOR"))
		voters := env(k, "KAFKA_CONTROLLER_QUORUM_VOTERS")
		r.expect("compose: "+n+" is a voter of the KRaft quorum",
			strings.Contains(voters, env(k, "KAFKA_NODE_ID")+"@"+n+":9093"), "voters %q", voters)
		r.expect("compose: "+n+" advertises its service name",
			env(k, "KAFKA_ADVERTISED_LISTENERS") == "PLAINTEXT://"+n+":9092", "%q", env(k, "KAFKA_ADVERTISED_LISTENERS"))
	}
	sort.Strings(brokersWant)

	promTargets := map[string][]string{}
	for _, n := range byImage("prom/prometheus:") {
		for _, v := range p.Services[n].Volumes {
			if v.Target == "/etc/prometheus/prometheus.yml" {
				data, err := os.ReadFile(v.Source)
				if r.check("compose: "+n+" configuration "+v.Source+" reads", err) {
					promTargets, err = scrapeTargets(data)
					r.check("compose: "+n+" configuration parses", err)
				}
			}
			if v.Target == "/etc/prometheus/rules.yml" {
				want, _ := filepath.Abs(filepath.Join(root, "deploy/prometheus/rules.yml"))
				r.expect("compose: "+n+" loads deploy/prometheus/rules.yml", v.Source == want, "mounts %s", v.Source)
			}
		}
	}

	var archiveStore, replayStore, database string
	var processorParts []int
	processorInstances, topicPartitions := map[int]bool{}, 0
	for _, n := range byImage("rainbow:") {
		svc := p.Services[n]
		role := ""
		if len(svc.Command) > 0 {
			role = svc.Command[0]
		}
		all := map[string]string{}
		for k, v := range imageEnv {
			all[k] = v
		}
		for k, v := range svc.Environment {
			if v != nil {
				all[k] = *v
			}
		}
		s, err := rainbowEnv(bin, all)
		if !r.check(fmt.Sprintf("compose: %s (rainbow %s) settings load", n, role), err) {
			continue
		}
		checkCompose := func(what string, err error) { r.check("compose: "+n+": "+what, err) }
		host, port, err := hostPort(s.Postgres.Host + ":" + strconv.Itoa(s.Postgres.Port))
		if err == nil && (!strings.HasPrefix(p.Services[host].Image, "postgres:") || port != 5432) {
			err = fmt.Errorf("%s:%d is not the postgres service", host, port)
		}
		checkCompose("postgres at "+s.Postgres.Host, err)
		got := strings.Split(s.Kafka.Brokers, ",")
		sort.Strings(got)
		r.expect("compose: "+n+": kafka.brokers lists every broker", strings.Join(got, ",") == strings.Join(brokersWant, ","),
			"%v, want %v", got, brokersWant)
		host, port, err = urlHostPort(s.ClickHouse.URL)
		if err == nil && (!strings.HasPrefix(p.Services[host].Image, "clickhouse/") || port != 8123) {
			err = fmt.Errorf("%s is not the clickhouse service's HTTP port", s.ClickHouse.URL)
		}
		checkCompose("clickhouse at "+s.ClickHouse.URL, err)
		database = s.ClickHouse.Database

		if job, ok := jobOf[role]; ok {
			_, port, err := hostPort(listenOf(role, s))
			if err == nil && !contains(promTargets[job], fmt.Sprintf("%s:%d", n, port)) {
				err = fmt.Errorf("prometheus job %s scrapes %v, the service listens on %d", job, promTargets[job], port)
			}
			checkCompose(fmt.Sprintf("listens on %s, scraped by job %s", listenOf(role, s), job), err)
			host, _, _ := hostPort(listenOf(role, s))
			r.expect("compose: "+n+": listens on all interfaces", host == "0.0.0.0", "listens on %s only", host)
			want := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
			test := ""
			if svc.HealthCheck != nil {
				test = strings.Join(svc.HealthCheck.Test, " ")
			}
			r.expect("compose: "+n+": healthcheck on its /readyz", strings.Contains(test, "curl") && strings.Contains(test, want),
				"healthcheck %q, want curl of %s", test, want)
		}
		switch role {
		case "api":
			published := false
			for _, pc := range svc.Ports {
				_, port, _ := hostPort(s.API.Listen)
				published = published || int(pc.Target) == port
			}
			r.expect("compose: api publishes api.listen's port", published, "ports %v", svc.Ports)
		case "cdc":
			r.expect("compose: cdc offsets on a volume", under(s.CDC.OffsetsDir, mounts(svc)), "%s not under %v", s.CDC.OffsetsDir, mounts(svc))
			r.expect("compose: cdc topics have the brokers' partitions and replication factor",
				s.CDC.TopicPartitions == 3 && s.CDC.TopicReplicationFactor == 2 && s.CDC.TopicReplicationFactor <= len(kafkas),
				"topic_partitions=%d topic_replication_factor=%d", s.CDC.TopicPartitions, s.CDC.TopicReplicationFactor)
		case "process":
			r.expect("compose: "+n+" checkpoints on a volume", under(s.Processor.CheckpointURL, mounts(svc)),
				"%s not under %v", s.Processor.CheckpointURL, mounts(svc))
			processorParts = append(processorParts, s.Processor.Partition)
			processorInstances[s.Processor.Instances] = true
			topicPartitions = s.CDC.TopicPartitions
		case "archive", "replay":
			ok := false
			for _, v := range svc.Volumes {
				if under(s.Storage.URL, []string{v.Target}) {
					ok = true
					if role == "archive" {
						archiveStore = v.Source
					} else {
						replayStore = v.Source
					}
				}
			}
			r.expect("compose: "+n+" keeps storage.url on a volume", ok, "%s not under %v", s.Storage.URL, mounts(svc))
		}
	}
	sort.Ints(processorParts)
	wantParts := []int{}
	for i := range processorParts {
		wantParts = append(wantParts, i)
	}
	r.expect("compose: the processor instances are 0..n-1 of processor.instances = n, n <= the topics' partitions",
		len(processorParts) > 0 && fmt.Sprint(processorParts) == fmt.Sprint(wantParts) && len(processorInstances) == 1 &&
			processorInstances[len(processorParts)] && len(processorParts) <= topicPartitions,
		"partitions %v, instances settings %v, topic partitions %d", processorParts, processorInstances, topicPartitions)
	supersets := byImage("rainbow-superset:")
	r.expect("compose: Superset serves the dashboard", len(supersets) == 1, "services %v", supersets)
	for _, n := range supersets {
		checkSupersetURI(r, "compose: "+n, env(p.Services[n], "SUPERSET_CLICKHOUSE_URI"),
			func(h string) bool { return strings.HasPrefix(p.Services[h].Image, "clickhouse/") }, database)
	}
	r.expect("compose: replay reads the archiver's volume", archiveStore != "" && archiveStore == replayStore,
		"archiver %q, replay %q", archiveStore, replayStore)
}

// ---------------------------------------------------------------- kubernetes

type podOwner struct {
	kind, name string
	replicas   int32
	spec       corev1.PodSpec
	labels     map[string]string
	// indexed: a Job whose pods get completion indexes (replicas = its completions).
	indexed bool
}

// completionIndex is the downward-API path of an indexed Job pod's index.
const completionIndex = "metadata.annotations['batch.kubernetes.io/job-completion-index']"

// argAfter is the value after flag in args ("" when absent).
func argAfter(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func validateK8s(r *report, root, bin string, imageEnv map[string]string) {
	opts := krusty.MakeDefaultOptions()
	opts.LoadRestrictions = ktypes.LoadRestrictionsNone
	resMap, err := krusty.MakeKustomizer(opts).Run(filesys.MakeFsOnDisk(), filepath.Join(root, "deploy/k8s"))
	if !r.check("k8s: kustomize build deploy/k8s", err) {
		return
	}
	decoder := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})
	configMaps := map[string]map[string]string{}
	secrets := map[string]map[string]string{}
	services := map[string]*corev1.Service{}
	var owners []podOwner
	for _, res := range resMap.Resources() {
		what := fmt.Sprintf("k8s: %s/%s decodes strictly into the API types", res.GetKind(), res.GetName())
		y, err := res.AsYAML()
		var obj runtime.Object
		if err == nil {
			obj, _, err = decoder.Decode(y, nil, nil)
		}
		if !r.check(what, err) {
			continue
		}
		if ns := res.GetNamespace(); res.GetKind() != "Namespace" {
			r.expect(fmt.Sprintf("k8s: %s/%s is in namespace rainbow", res.GetKind(), res.GetName()), ns == "rainbow", "namespace %q", ns)
		}
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			configMaps[o.Name] = o.Data
		case *corev1.Secret:
			m := map[string]string{}
			for k, v := range o.StringData {
				m[k] = v
			}
			for k, v := range o.Data {
				m[k] = string(v)
			}
			secrets[o.Name] = m
		case *corev1.Service:
			services[o.Name] = o
		case *appsv1.Deployment:
			owners = append(owners, podOwner{"Deployment", o.Name, ptrOr(o.Spec.Replicas), o.Spec.Template.Spec, o.Spec.Template.Labels, false})
		case *appsv1.StatefulSet:
			owners = append(owners, podOwner{"StatefulSet", o.Name, ptrOr(o.Spec.Replicas), o.Spec.Template.Spec, o.Spec.Template.Labels, false})
		case *batchv1.Job:
			indexed := o.Spec.CompletionMode != nil && *o.Spec.CompletionMode == batchv1.IndexedCompletion
			owners = append(owners, podOwner{"Job", o.Name, ptrOr(o.Spec.Completions), o.Spec.Template.Spec, o.Spec.Template.Labels, indexed})
		case *batchv1.CronJob:
			owners = append(owners, podOwner{"CronJob", o.Name, 1, o.Spec.JobTemplate.Spec.Template.Spec, nil, false})
		}
	}

	jobs := map[string][]string{}
	if cm, ok := configMaps["prometheus-config"]; r.expect("k8s: ConfigMap prometheus-config exists", ok, "missing") {
		jobs, err = scrapeTargets([]byte(cm["prometheus.yml"]))
		r.check("k8s: prometheus.yml in prometheus-config parses", err)
	}
	rules, _ := os.ReadFile(filepath.Join(root, "deploy/prometheus/rules.yml"))
	r.expect("k8s: ConfigMap prometheus-rules is deploy/prometheus/rules.yml", configMaps["prometheus-rules"]["rules.yml"] == string(rules), "differs")

	// A DNS name of a Service in namespace rainbow: <svc>, <svc>.rainbow.svc.cluster.local, or
	// <pod>.<svc>.rainbow.svc.cluster.local for a StatefulSet's pod.
	serviceOf := func(host string) (string, string) {
		parts := strings.Split(strings.TrimSuffix(host, ".rainbow.svc.cluster.local"), ".")
		if len(parts) == 2 {
			return parts[1], parts[0]
		}
		return parts[0], ""
	}
	servicePort := func(name string, port int) bool {
		svc := services[name]
		if svc == nil {
			return false
		}
		for _, sp := range svc.Spec.Ports {
			if int(sp.Port) == port {
				return true
			}
		}
		return false
	}
	ownerByName := map[string]podOwner{}
	for _, o := range owners {
		ownerByName[o.name] = o
	}
	kafka := ownerByName["kafka"]
	r.expect("k8s: Kafka runs 3 KRaft brokers", kafka.kind == "StatefulSet" && kafka.replicas == 3, "%s replicas %d", kafka.kind, kafka.replicas)
	containerEnv := func(c corev1.Container, k string) string {
		for _, e := range c.Env {
			if e.Name == k {
				return e.Value
			}
		}
		return ""
	}
	for _, c := range kafka.spec.Containers {
		r.expect("k8s: kafka defaults to 3 partitions, replication factor 2",
			containerEnv(c, "KAFKA_NUM_PARTITIONS") == "3" && containerEnv(c, "KAFKA_DEFAULT_REPLICATION_FACTOR") == "2", "env %v", c.Env)
	}
	for _, c := range ownerByName["postgres"].spec.Containers {
		r.expect("k8s: postgres runs with wal_level=logical", contains(c.Args, "wal_level=logical"), "args %v", c.Args)
	}

	database := ""
	var supersetURIs []struct{ where, uri string }
	// Replays run by several processes, and the combines of their outputs: --out -> processes.
	sharded, combines := map[string]int{}, map[string]int{}
	for _, o := range owners {
		for _, c := range append(append([]corev1.Container{}, o.spec.InitContainers...), o.spec.Containers...) {
			where := fmt.Sprintf("k8s %s/%s container %s", o.kind, o.name, c.Name)
			checkPinned(r, where, c.Image)
			if strings.HasPrefix(c.Image, "rainbow-superset:") {
				supersetURIs = append(supersetURIs, struct{ where, uri string }{where, containerEnv(c, "SUPERSET_CLICKHOUSE_URI")})
			}
			if !strings.HasPrefix(c.Image, "rainbow:") {
				continue
			}
			env := map[string]string{}
			for k, v := range imageEnv {
				env[k] = v
			}
			for _, from := range c.EnvFrom {
				if from.ConfigMapRef != nil {
					m, ok := configMaps[from.ConfigMapRef.Name]
					r.expect(where+": ConfigMap "+from.ConfigMapRef.Name+" exists", ok, "missing")
					for k, v := range m {
						env[k] = v
					}
				}
				if from.SecretRef != nil {
					m, ok := secrets[from.SecretRef.Name]
					r.expect(where+": Secret "+from.SecretRef.Name+" exists", ok, "missing")
					for k, v := range m {
						if strings.HasPrefix(k, "RAINBOW_") {
							env[k] = v
						}
					}
				}
			}
			indexEnv := ""
			for _, e := range c.Env {
				if e.ValueFrom != nil {
					// Known only in the pod: the completion index loads as 0 here.
					if e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == completionIndex {
						indexEnv = e.Name
						env[e.Name] = "0"
					}
					continue
				}
				env[e.Name] = e.Value
			}
			joined := strings.Join(append(append([]string{}, c.Command...), c.Args...), " ")
			role := ""
			if len(c.Args) > 0 && len(c.Command) == 0 {
				role = c.Args[0]
				// `archive compact` (a CronJob) is a command, not the archiver service.
				if role == "archive" && len(c.Args) > 1 && c.Args[1] == "compact" {
					role = "archive compact"
				}
			} else if m := shellRole.FindStringSubmatch(joined); m != nil {
				role = m[1]
			}
			s, err := rainbowEnv(bin, env)
			if !r.check(where+" ("+role+") settings load", err) {
				continue
			}
			host, port, err := hostPort(s.Postgres.Host + ":" + strconv.Itoa(s.Postgres.Port))
			if svc, _ := serviceOf(host); err == nil && !servicePort(svc, port) {
				err = fmt.Errorf("no Service %s with port %d", svc, port)
			}
			r.check(where+": postgres at "+s.Postgres.Host, err)
			for _, b := range strings.Split(s.Kafka.Brokers, ",") {
				host, port, err := hostPort(b)
				svc, pod := serviceOf(host)
				if err == nil && (!servicePort(svc, port) || !strings.HasPrefix(pod, svc+"-")) {
					err = fmt.Errorf("%s is not a pod of the kafka StatefulSet's Service", b)
				}
				if err == nil {
					ord, _ := strconv.Atoi(strings.TrimPrefix(pod, svc+"-"))
					if int32(ord) >= kafka.replicas {
						err = fmt.Errorf("%s: the kafka StatefulSet has %d replicas", b, kafka.replicas)
					}
				}
				r.check(where+": broker "+b, err)
			}
			host, port, err = urlHostPort(s.ClickHouse.URL)
			if svc, _ := serviceOf(host); err == nil && !servicePort(svc, port) {
				err = fmt.Errorf("no Service %s with port %d", svc, port)
			}
			r.check(where+": clickhouse at "+s.ClickHouse.URL, err)
			database = s.ClickHouse.Database

			if job, ok := jobOf[role]; ok {
				listen := listenOf(role, s)
				h, port, err := hostPort(listen)
				r.expect(where+": listens on all interfaces", err == nil && h == "0.0.0.0", "listens on %s", listen)
				declared := false
				for _, cp := range c.Ports {
					declared = declared || int(cp.ContainerPort) == port
				}
				r.expect(fmt.Sprintf("%s: containerPort %d declared", where, port), declared, "ports %v", c.Ports)
				probe := func(kind string, p *corev1.Probe, path string) {
					ok := p != nil && p.HTTPGet != nil && p.HTTPGet.Path == path && p.HTTPGet.Port.IntValue() == port
					r.expect(fmt.Sprintf("%s: %s on %s, port %d", where, kind, path, port), ok, "probe %+v", p)
				}
				probe("readinessProbe", c.ReadinessProbe, "/readyz")
				probe("livenessProbe", c.LivenessProbe, "/healthz")
				var svcName string
				for name, svc := range services {
					if svc.Spec.Selector["app"] != "" && svc.Spec.Selector["app"] == o.labels["app"] {
						svcName = name
					}
				}
				r.expect(fmt.Sprintf("%s: Service %s exposes port %d", where, svcName, port), servicePort(svcName, port), "no Service selects app=%s with that port", o.labels["app"])
				scraped := contains(jobs[job], fmt.Sprintf("%s.rainbow.svc.cluster.local:%d", svcName, port)) || contains(jobs[job], "service:"+svcName)
				r.expect(fmt.Sprintf("%s: scraped by Prometheus job %s", where, job), scraped, "job %s scrapes %v", job, jobs[job])
			}
			mountPaths := []string{}
			for _, m := range c.VolumeMounts {
				mountPaths = append(mountPaths, m.MountPath)
			}
			switch role {
			case "cdc":
				r.expect(where+": one CDC instance (one replication slot)", o.kind == "StatefulSet" && o.replicas == 1, "%s with %d replicas", o.kind, o.replicas)
				r.expect(where+": offsets on a volume", under(s.CDC.OffsetsDir, mountPaths), "%s not under %v", s.CDC.OffsetsDir, mountPaths)
				r.expect(where+": topics have the brokers' partitions and replication factor",
					s.CDC.TopicPartitions == 3 && s.CDC.TopicReplicationFactor == 2 && int32(s.CDC.TopicReplicationFactor) <= kafka.replicas,
					"topic_partitions=%d topic_replication_factor=%d", s.CDC.TopicPartitions, s.CDC.TopicReplicationFactor)
			case "process":
				r.expect(where+": checkpoints on a volume", under(s.Processor.CheckpointURL, mountPaths), "%s not under %v", s.Processor.CheckpointURL, mountPaths)
				r.expect(where+": replicas equal processor.instances, at most the fact topics' partitions",
					o.kind == "StatefulSet" && int(o.replicas) == s.Processor.Instances && s.Processor.Instances <= s.CDC.TopicPartitions,
					"%s with %d replicas, processor.instances = %d, cdc.topic_partitions = %d", o.kind, o.replicas, s.Processor.Instances, s.CDC.TopicPartitions)
				r.expect(where+": each pod is the instance of its ordinal",
					s.Processor.Instances == 1 || strings.Contains(joined, "RAINBOW_PROCESSOR__PARTITION=${HOSTNAME##*-}"),
					"the command does not set RAINBOW_PROCESSOR__PARTITION from the pod's ordinal: %s", joined)
			case "archive", "archive compact", "replay":
				r.expect(where+": storage.url is an object-store bucket shared by archiver and replay",
					strings.HasPrefix(s.Storage.URL, "s3://") || strings.HasPrefix(s.Storage.URL, "gs://") || strings.HasPrefix(s.Storage.URL, "az://"),
					"storage.url %s is a local path inside a pod", s.Storage.URL)
				// The embedded SQLite catalog lives on a local disk: tables in a bucket need a
				// REST catalog (the archiver would exit 2 at start).
				r.expect(where+": archive.catalog_url is a REST catalog",
					strings.HasPrefix(s.Archive.CatalogURL, "http://") || strings.HasPrefix(s.Archive.CatalogURL, "https://"),
					"archive.catalog_url %q with storage.url %s", s.Archive.CatalogURL, s.Storage.URL)
			}
			if role == "archive compact" {
				r.check(where+": archive compact arguments parse", argsParse(bin, c.Args))
			}
			if role == "replay" && len(c.Command) == 0 {
				r.check(where+": replay arguments parse", replayArgsParse(bin, c.Args))
				processes := s.Replay.Processes
				if v := argAfter(c.Args, "--processes"); v != "" {
					processes, _ = strconv.Atoi(v)
				}
				out := argAfter(c.Args, "--out")
				switch {
				case contains(c.Args, "--combine"):
					combines[out] = processes
				case processes > 1:
					r.expect(where+": the replay's processes are an indexed Job's pods, one per process",
						o.kind == "Job" && o.indexed && int(o.replicas) == processes,
						"%s indexed=%v with %d completions for %d processes", o.kind, o.indexed, o.replicas, processes)
					r.expect(where+": each pod is the replay process of its completion index",
						indexEnv == "RAINBOW_REPLAY__PROCESS", "RAINBOW_REPLAY__PROCESS is not set from %s", completionIndex)
					r.expect(where+": replay processes at most the fact topics' partitions", processes <= s.CDC.TopicPartitions,
						"%d processes, cdc.topic_partitions = %d", processes, s.CDC.TopicPartitions)
					sharded[out] = processes
				}
			}
		}
	}
	for out, processes := range sharded {
		r.expect("k8s: the sharded replay into "+out+" has a combine Job (same --out and --processes, --combine)",
			combines[out] == processes, "combines: %v", combines)
	}
	r.expect("k8s: Superset serves the dashboard", len(supersetURIs) == 1, "%d Superset containers", len(supersetURIs))
	for _, su := range supersetURIs {
		checkSupersetURI(r, su.where, su.uri, func(h string) bool {
			svc, _ := serviceOf(h)
			return servicePort(svc, 9000)
		}, database)
	}
}

func ptrOr(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

// argsParse runs the command with --help appended: the arguments before it are parsed (and
// refused with exit code 2) first, and nothing runs.
func argsParse(bin string, args []string) error {
	out, err := exec.Command(bin, append(append([]string{}, args...), "--help")...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("rainbow %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// replayArgsParse runs the Job's replay command with local stand-ins for the object-store URLs and
// an empty archive: the arguments parse when the binary gets as far as finding no record (or, for
// a combine, no shard output; it is run without waiting).
func replayArgsParse(bin string, args []string) error {
	tmp, err := os.MkdirTemp("", "rainbow-validate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	local := make([]string, len(args))
	for i, a := range args {
		local[i] = a
		if strings.Contains(a, "://") {
			local[i] = filepath.Join(tmp, "out")
		}
		if i > 0 && args[i-1] == "--wait" {
			local[i] = "0"
		}
	}
	local = append(local, "--archive", filepath.Join(tmp, "archive"))
	cmd := exec.Command(bin, local...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	cmd.Dir = tmp
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	expected := "holds no record"
	if contains(args, "--combine") {
		expected = "have no complete output"
	}
	if errors.As(err, &exit) && strings.Contains(string(out), expected) {
		return nil
	}
	return fmt.Errorf("rainbow %s: %v: %s", strings.Join(local, " "), err, out)
}

func main() {
	root := flag.String("root", ".", "repository root")
	bin := flag.String("rainbow", "", "path of the rainbow binary (required)")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "usage: validate -rainbow PATH [-root DIR]")
		os.Exit(2)
	}
	if validate(*root, *bin, os.Stdout) > 0 {
		os.Exit(1)
	}
}

// validate runs every check and returns how many failed.
func validate(root, bin string, out io.Writer) int {
	r := &report{out: out}
	imageEnv, froms, err := dockerfileEnv(filepath.Join(root, "deploy/docker/Dockerfile"))
	r.check("deploy/docker/Dockerfile reads", err)
	_, supersetFroms, err := dockerfileEnv(filepath.Join(root, "deploy/superset/Dockerfile"))
	r.check("deploy/superset/Dockerfile reads", err)
	for _, f := range append(froms, supersetFroms...) {
		checkPinned(r, "Dockerfile FROM", f)
	}
	dockerfile, _ := os.ReadFile(filepath.Join(root, "deploy/docker/Dockerfile"))
	r.expect("the image installs curl (the compose healthchecks run it)",
		regexp.MustCompile(`apt-get install[^\n]*\bcurl\b`).Match(dockerfile), "no `apt-get install ... curl` in deploy/docker/Dockerfile")
	if _, err := rainbowEnv(bin, imageEnv); !r.check("the image's ENV loads", err) {
		return r.failed
	}
	validateCompose(r, root, bin, imageEnv)
	validateK8s(r, root, bin, imageEnv)
	if r.failed > 0 {
		fmt.Fprintf(out, "\n%d deploy check(s) failed\n", r.failed)
	} else {
		fmt.Fprintf(out, "\nall %d deploy checks passed\n", r.passed)
	}
	return r.failed
}
