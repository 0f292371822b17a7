package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

// spec is api/openapi.yaml, loaded once, with a JSON Schema 2020-12
// compiler over the whole document: OpenAPI 3.1 schemas are JSON Schema, so
// "#/components/schemas/X" and the inline schemas compile by JSON pointer.
type spec struct {
	doc map[string]any
	c   *jsonschema.Compiler
	ops []*specOp

	mu      sync.Mutex
	schemas map[string]*jsonschema.Schema
	seen    map[string]map[string]bool // operationId → statuses answered
}

type specOp struct {
	id, method, tmpl string
	re               *regexp.Regexp
	responses        map[string]any
}

const specURL = "file:///openapi.json"

var (
	specOnce sync.Once
	theSpec  *spec
	specErr  error
)

func loadSpec(t testing.TB) *spec {
	t.Helper()
	specOnce.Do(func() { theSpec, specErr = parseSpec("openapi.yaml") })
	if specErr != nil {
		t.Fatalf("openapi.yaml: %v", specErr)
	}
	return theSpec
}

func parseSpec(path string) (*spec, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var y any
	if err := yaml.Unmarshal(raw, &y); err != nil {
		return nil, err
	}
	// YAML → JSON → the validator's own JSON values (json.Number etc.).
	j, err := json.Marshal(y)
	if err != nil {
		return nil, err
	}
	docAny, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		return nil, err
	}
	doc := docAny.(map[string]any)
	if v := doc["openapi"]; v != "3.1.0" {
		return nil, fmt.Errorf("openapi version %v, want 3.1.0", v)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource(specURL, doc); err != nil {
		return nil, err
	}
	s := &spec{doc: doc, c: c, schemas: map[string]*jsonschema.Schema{}, seen: map[string]map[string]bool{}}
	paths := doc["paths"].(map[string]any)
	for tmpl, pv := range paths {
		item := pv.(map[string]any)
		re := "^" + regexp.MustCompile(`\\\{[a-z]+\\\}`).ReplaceAllString(regexp.QuoteMeta(tmpl), `[^/]+`) + "$"
		for m, ov := range item {
			if m == "parameters" {
				continue
			}
			op := ov.(map[string]any)
			s.ops = append(s.ops, &specOp{
				id: op["operationId"].(string), method: strings.ToUpper(m), tmpl: tmpl,
				re: regexp.MustCompile(re), responses: op["responses"].(map[string]any),
			})
		}
	}
	// Compile every schema once up front so a broken one fails loudly.
	for name := range doc["components"].(map[string]any)["schemas"].(map[string]any) {
		if _, err := s.schema("#/components/schemas/" + name); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *spec) schema(ptr string) (*jsonschema.Schema, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sch := s.schemas[ptr]; sch != nil {
		return sch, nil
	}
	sch, err := s.c.Compile(specURL + ptr)
	if err != nil {
		return nil, err
	}
	s.schemas[ptr] = sch
	return sch, nil
}

func escPtr(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1") }

// check validates one response: its status must be listed for the matched
// operation (or be a 404/405 from the router), its content type listed for
// that status and its body valid against the schema.
func (s *spec) check(method, path string, status int, contentType string, body []byte) error {
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.TrimSpace(mt)
	var respPtr string
	var op *specOp
	for _, o := range s.ops {
		if o.re.MatchString(path) && o.method == method {
			op = o
			break
		}
		if o.re.MatchString(path) && method == http.MethodHead && o.method == http.MethodGet {
			op = o
		}
	}
	code := fmt.Sprint(status)
	switch {
	case op != nil:
		r, ok := op.responses[code]
		if !ok {
			return fmt.Errorf("%s %s: status %d is not in the spec of %s (has %v)", method, path, status, op.id, keys(op.responses))
		}
		respPtr = "#/paths/" + escPtr(op.tmpl) + "/" + strings.ToLower(op.method) + "/responses/" + code
		if ref, ok := r.(map[string]any)["$ref"].(string); ok {
			respPtr = ref
		}
		s.mu.Lock()
		if s.seen[op.id] == nil {
			s.seen[op.id] = map[string]bool{}
		}
		s.seen[op.id][code] = true
		s.mu.Unlock()
	case status == http.StatusNotFound:
		respPtr = "#/components/responses/NotFound"
	case status == http.StatusMethodNotAllowed:
		respPtr = "#/components/responses/MethodNotAllowed"
	case status == http.StatusUnauthorized && strings.HasPrefix(path, "/v1"):
		respPtr = "#/components/responses/Unauthorized"
	default:
		return fmt.Errorf("%s %s: no operation in the spec answers %d", method, path, status)
	}
	resp := s.resolve(respPtr)
	content, _ := resp["content"].(map[string]any)
	if _, ok := content[mt]; !ok {
		return fmt.Errorf("%s %s %d: content type %q is not in the spec (%s has %v)", method, path, status, mt, respPtr, keys(content))
	}
	// Text bodies (metrics, the status page) have no JSON schema to check.
	if strings.HasPrefix(mt, "text/") || method == http.MethodHead {
		return nil
	}
	sch, err := s.schema(respPtr + "/content/" + escPtr(mt) + "/schema")
	if err != nil {
		return err
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s %s %d: body is not JSON: %v: %q", method, path, status, err, body)
	}
	if err := sch.Validate(inst); err != nil {
		return fmt.Errorf("%s %s %d: body %s does not match %s: %v", method, path, status, body, respPtr, err)
	}
	return nil
}

// resolve follows a "#/a/b" pointer in the document.
func (s *spec) resolve(ptr string) map[string]any {
	var v any = s.doc
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "#/"), "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		v = v.(map[string]any)[tok]
	}
	return v.(map[string]any)
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// validating is an http.RoundTripper that checks every response against the
// spec, so every request a test makes is also a spec test.
type validating struct {
	t    testing.TB
	s    *spec
	next http.RoundTripper
}

func (v *validating) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := v.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err := v.s.check(req.Method, req.URL.Path, resp.StatusCode, resp.Header.Get("Content-Type"), body); err != nil {
		v.t.Errorf("openapi: %v", err)
	}
	return resp, nil
}

func TestSpecCodesMatchAPI(t *testing.T) {
	s := loadSpec(t)
	var spec []string
	for _, c := range s.doc["components"].(map[string]any)["schemas"].(map[string]any)["Code"].(map[string]any)["enum"].([]any) {
		spec = append(spec, c.(string))
	}
	got := slices.Sorted(slices.Values(allCodes))
	slices.Sort(spec)
	if !slices.Equal(got, spec) {
		t.Errorf("problem codes in the spec %v, want the api package's %v", spec, got)
	}
}
