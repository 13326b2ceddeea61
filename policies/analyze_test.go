package policies

import (
	"slices"
	"strings"
	"testing"
)

func TestAnalyze(t *testing.T) {
	for _, tc := range []struct {
		cond     string
		fields   []string
		context  attrMask
		resource bool
	}{
		{``, []string{}, 0, false},
		{`when { resource.host == "a" }`, []string{"resource.host"}, 0, true},
		{`when { resource == Firma::Resource::"a/" }`, []string{}, 0, true},
		{`when { context.json has model && context.json.model == "m" }`, []string{"context.json.model"}, maskOf(attrJSON), false},
		{`when { context.body_size > 10 && resource.path like "/v1/*" }`, []string{"context.body_size", "resource.path"}, maskOf(attrBodySize), true},
		{`when { context.headers.hasTag("user-agent") && context.headers.getTag("user-agent") like "curl*" }`, []string{"context.headers.user-agent"}, maskOf(attrHeaders), false},
		{`when { context.query.hasTag(context.exe) }`, []string{"context.exe", "context.query.*"}, maskOf(attrQuery, attrExe), false},
		{`when { context.actions_last_hour.hasTag("model") && context.actions_last_hour.getTag("model") >= 100 }`, []string{"context.actions_last_hour.model"}, maskOf(attrActionsHour), false},
		{`when { context.deny_count > 0 || context.prior_action_classes.contains("code.read") }`, []string{"context.deny_count", "context.prior_action_classes"}, maskOf(attrDenyCount, attrPriorClasses), false},
		// The whole record, or an attribute of a computed value: everything.
		{`when { {a: context}.a.uid == 0 }`, []string{"context"}, allAttrs, false},
		{`when { (if context.uid == 0 then context else context).exe == "x" }`, []string{"context", "context.uid"}, allAttrs, false},
		{`when { (if true then resource else resource).host == "x" }`, []string{}, 0, true},
	} {
		text := "forbid (principal, action, resource) " + tc.cond + ";"
		set, err := ParseFiles(map[string][]byte{"a.cedar": []byte(text)}, nil)
		if err != nil {
			t.Fatalf("%s: %v", text, err)
		}
		r := set.policies[0].reads
		if !slices.Equal(r.fields, tc.fields) || r.context != tc.context || r.resource != tc.resource {
			t.Errorf("%s:\n\tgot fields %q context %v resource %v\n\twant fields %q context %v resource %v",
				tc.cond, r.fields, r.context.names(), r.resource, tc.fields, tc.context.names(), tc.resource)
		}
	}
}

func TestCheckHas(t *testing.T) {
	s := EmbeddedSchema()
	for _, ok := range []string{"context.json.model", "resource.provider", "context.body_size", "context.json.model.x", "principal.x"} {
		if err := s.checkHas(ok); err != nil {
			t.Errorf("checkHas(%q): %v", ok, err)
		}
	}
	for path, want := range map[string]string{
		"context.json.modle":      `Firma::Json declares no attribute "modle"`,
		"context.bodysize":        `the context declares no attribute "bodysize"`,
		"resource.hots":           `Firma::Resource declares no attribute "hots"`,
		"context.query.api_key":   `Firma::Query has no attributes, only tags: write context.query.hasTag("api_key")`,
		"context.headers.x-debug": `only tags`,
	} {
		if err := s.checkHas(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("checkHas(%q) = %v, want %q", path, err, want)
		}
	}
}
