// render-chart renders a Helm chart's templates the way `helm template` does, for machines
// without helm: Go text/template with sprig, Helm's own functions (include, tpl, toYaml,
// fromYaml, required, lookup), and the built-in objects .Values, .Release, .Chart, .Files and
// .Capabilities. CRDs in the chart's crds/ directory are not rendered (helm installs them as
// they are), exactly as `helm template` without --include-crds.
//
// Usage: render-chart [-f values.yaml]... [--set a.b=c]... [-n namespace] [--name release]
//                     [--api-versions group/version]... CHART_DIR
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// Files is .Files: the chart's files by path relative to the chart root.
type Files map[string][]byte

func (f Files) Get(name string) string { return string(f[name]) }

func (f Files) Glob(pattern string) Files {
	out := Files{}
	for name, data := range f {
		if ok, _ := path.Match(pattern, name); ok {
			out[name] = data
		}
	}
	return out
}

type apiVersions []string

func (a apiVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "render-chart: "+format+"\n", args...)
	os.Exit(1)
}

func mergeMaps(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if sv, ok := v.(map[string]interface{}); ok {
			if dv, ok := dst[k].(map[string]interface{}); ok {
				dst[k] = mergeMaps(dv, sv)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

func parseScalar(s string) interface{} {
	if s == "true" || s == "false" {
		return s == "true"
	}
	if s == "null" {
		return nil
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return f
	}
	return s
}

func setPath(values map[string]interface{}, assignment string) {
	eq := strings.Index(assignment, "=")
	if eq < 0 {
		die("--set %q: expected key=value", assignment)
	}
	keys := strings.Split(assignment[:eq], ".")
	node := values
	for _, k := range keys[:len(keys)-1] {
		next, ok := node[k].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			node[k] = next
		}
		node = next
	}
	raw := assignment[eq+1:]
	if strings.HasPrefix(raw, "{") && strings.HasSuffix(raw, "}") {
		items := []interface{}{}
		for _, item := range strings.Split(strings.Trim(raw, "{}"), ",") {
			if item != "" {
				items = append(items, parseScalar(item))
			}
		}
		node[keys[len(keys)-1]] = items
		return
	}
	node[keys[len(keys)-1]] = parseScalar(raw)
}

func readYAML(file string) map[string]interface{} {
	data, err := os.ReadFile(file)
	if err != nil {
		die("%v", err)
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		die("%s: %v", file, err)
	}
	return out
}

func main() {
	var valueFiles, sets, apis multi
	namespace := flag.String("n", "default", "release namespace")
	name := flag.String("name", "hotconf", "release name")
	flag.Var(&valueFiles, "f", "values file (repeatable)")
	flag.Var(&sets, "set", "a.b=c (repeatable)")
	flag.Var(&apis, "api-versions", "API versions the cluster serves, for .Capabilities (repeatable)")
	flag.Parse()
	if flag.NArg() != 1 {
		die("usage: render-chart [-f values.yaml]... [--set k=v]... [-n ns] [--name release] CHART_DIR")
	}
	chartDir := flag.Arg(0)

	chartMeta := readYAML(filepath.Join(chartDir, "Chart.yaml"))
	chart := map[string]interface{}{}
	for k, v := range chartMeta {
		chart[strings.ToUpper(k[:1])+k[1:]] = v
	}
	values := readYAML(filepath.Join(chartDir, "values.yaml"))
	for _, f := range valueFiles {
		values = mergeMaps(values, readYAML(f))
	}
	for _, s := range sets {
		setPath(values, s)
	}

	files := Files{}
	err := filepath.Walk(chartDir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(chartDir, p)
		data, err := os.ReadFile(p)
		files[filepath.ToSlash(rel)] = data
		return err
	})
	if err != nil {
		die("%v", err)
	}

	root := template.New("root").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	funcs["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		out := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &out); err != nil {
			out["Error"] = err.Error()
		}
		return out
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	funcs["lookup"] = func(string, string, string, string) map[string]interface{} {
		return map[string]interface{}{}
	}
	root.Funcs(funcs)

	var names []string
	for name := range files {
		if strings.HasPrefix(name, "templates/") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		if _, err := root.New(path.Join(filepath.Base(chartDir), n)).Parse(string(files[n])); err != nil {
			die("%s: %v", n, err)
		}
	}

	data := map[string]interface{}{
		"Values": values,
		"Chart":  chart,
		"Files":  files,
		"Release": map[string]interface{}{
			"Name": *name, "Namespace": *namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": map[string]interface{}{
			"APIVersions": apiVersions(apis),
			"KubeVersion": map[string]interface{}{"Version": "v1.20.2", "Major": "1", "Minor": "20"},
		},
		"Template": map[string]interface{}{"BasePath": path.Join(filepath.Base(chartDir), "templates")},
	}
	var out bytes.Buffer
	for _, n := range names {
		base := path.Base(n)
		if strings.HasPrefix(base, "_") || !(strings.HasSuffix(base, ".yaml") || strings.HasSuffix(base, ".yml")) {
			continue
		}
		full := path.Join(filepath.Base(chartDir), n)
		var buf bytes.Buffer
		tmplData := map[string]interface{}{}
		for k, v := range data {
			tmplData[k] = v
		}
		tmplData["Template"] = map[string]interface{}{"Name": full, "BasePath": path.Join(filepath.Base(chartDir), "templates")}
		if err := root.ExecuteTemplate(&buf, full, tmplData); err != nil {
			die("%v", err)
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(text) == "" {
			continue
		}
		for _, doc := range strings.Split(text, "\n---") {
			if strings.TrimSpace(strings.TrimPrefix(doc, "---")) == "" {
				continue
			}
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", full, strings.TrimSpace(strings.TrimPrefix(doc, "---")))
		}
	}
	os.Stdout.Write(out.Bytes())
}
