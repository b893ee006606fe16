package entrypoint

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var updateReadme = flag.Bool("update-readme", false, "rewrite the README's variable table from Variables()")

const (
	tableBegin = "<!-- variables:begin (generated: go test ./entrypoint -update-readme) -->"
	tableEnd   = "<!-- variables:end -->"
)

func markdownTable() string {
	var b strings.Builder
	b.WriteString("| Variable | Default | Meaning |\n|---|---|---|\n")
	for _, v := range Variables() {
		def := v.Default
		if def == "" {
			def = "–"
		} else {
			def = "`" + def + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", v.Name, def, strings.ReplaceAll(v.Description, "|", "\\|"))
	}
	return b.String()
}

// TestReadmeVariables keeps the README's table and --help from one source.
func TestReadmeVariables(t *testing.T) {
	const path = "../README.md"
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	i, j := strings.Index(text, tableBegin), strings.Index(text, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("README lacks the variable table markers")
	}
	want := text[:i+len(tableBegin)] + "\n" + markdownTable() + text[j:]
	if *updateReadme {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if want != text {
		t.Fatalf("README variable table is out of date: go test ./entrypoint -update-readme")
	}
}
