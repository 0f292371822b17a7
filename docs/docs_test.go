// Package docs_test checks that the repository explains itself: every
// relative link in its Markdown files resolves to a file of the repository,
// every "docs/DESIGN.md §N" citation names a section that exists, and nothing
// points at team documents outside the repository (a clone does not have them).
package docs_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// repoFiles returns the repository root and its text files worth reading
// (source, docs, config), skipping hidden folders and build outputs.
func repoFiles(t *testing.T) (string, []string) {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root %s has no go.mod: %v", root, err)
	}
	exts := map[string]bool{".go": true, ".md": true, ".yaml": true, ".yml": true, ".py": true, ".sh": true,
		".js": true, ".ts": true, ".json": true, ".toml": true}
	var files []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if p != root && (strings.HasPrefix(name, ".") || name == "bin" || name == "data" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if exts[filepath.Ext(p)] || d.Name() == "Makefile" {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return root, files
}

// The strings are built so that this file does not match itself.
var (
	outside = regexp.MustCompile(`\.\./` + `shared|SPIKES` + `\.md`)
	// A citation may be broken across comment lines ("DESIGN.md\n// §6").
	citation = regexp.MustCompile(`(\S*)DESIGN\.md(?:\s|//|#)*(§\d+)`)
	heading  = regexp.MustCompile(`(?m)^## (§\d+)\b`)
	mdLink   = regexp.MustCompile(`\]\(([^)\s]+)\)`)
)

func TestNothingPointsOutsideTheRepo(t *testing.T) {
	root, files := repoFiles(t)
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if outside.MatchString(line) {
				rel, _ := filepath.Rel(root, p)
				t.Errorf("%s:%d points outside the repository: %s", rel, i+1, strings.TrimSpace(line))
			}
		}
	}
}

func TestDesignCitationsExist(t *testing.T) {
	root, files := repoFiles(t)
	design, err := os.ReadFile(filepath.Join(root, "docs", "DESIGN.md"))
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]bool{}
	for _, m := range heading.FindAllStringSubmatch(string(design), -1) {
		sections[m[1]] = true
	}
	if len(sections) < 5 {
		t.Fatalf("docs/DESIGN.md has %d numbered sections (## §N), want the whole design", len(sections))
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		for _, m := range citation.FindAllStringSubmatch(string(b), -1) {
			prefix, sec := m[1], m[2]
			// A citation must name the file by its path in the repo, so a
			// reader can tell it from the packages' own DESIGN.md files.
			if !strings.HasSuffix(prefix, "docs/") && !strings.HasSuffix(prefix, "(docs/") && rel != filepath.Join("docs", "DESIGN.md") {
				t.Errorf("%s: cites %q; write docs/DESIGN.md %s", rel, m[0], sec)
			}
			if !sections[sec] {
				t.Errorf("%s: cites %s, which docs/DESIGN.md does not have", rel, sec)
			}
		}
	}
}

func TestMarkdownLinksResolve(t *testing.T) {
	root, files := repoFiles(t)
	for _, p := range files {
		if filepath.Ext(p) != ".md" {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		for _, m := range mdLink.FindAllStringSubmatch(string(b), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") || strings.HasPrefix(target, "#") {
				continue
			}
			target, _, _ = strings.Cut(target, "#")
			abs := filepath.Clean(filepath.Join(filepath.Dir(p), target))
			if r, err := filepath.Rel(root, abs); err != nil || strings.HasPrefix(r, "..") {
				t.Errorf("%s: link %q leaves the repository", rel, m[1])
				continue
			}
			if _, err := os.Stat(abs); err != nil {
				t.Errorf("%s: link %q: %v", rel, m[1], err)
			}
		}
	}
}
