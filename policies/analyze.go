package policies

import (
	"fmt"
	"slices"
	"strings"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
	"github.com/cedar-policy/cedar-go/x/exp/schema/resolved"
)

// reads is what a policy's conditions read, found once at load by walking its AST.
type reads struct {
	context  attrMask // the context attributes a decision must build for it
	resource bool     // whether it reads the resource's attributes
	// fields are the attribute paths it reads, sorted: "context.json.model", "resource.host",
	// "context.headers.user-agent" (a tag by literal name), "context.query.*" (a tag by computed
	// name), or "context" when it uses the whole record.
	fields []string
	// tests are the paths of its `has` tests. The validator types `x has a` as false when x's type
	// cannot have a, so a misspelled attribute would silently never match: parseFile refuses them.
	tests []string
}

// analyze walks a policy's conditions. Scopes read neither record: they compare uids and walk
// parents. Anything it cannot follow to a named attribute (the bare record, an attribute of a
// computed value) counts as reading everything, so a decision never omits what a policy reads.
func analyze(p *cedar.Policy) reads {
	var r reads
	fields := map[string]bool{}
	var visit func(n xast.IsNode) bool
	visit = func(n xast.IsNode) bool {
		var path string
		var ok bool
		switch v := n.(type) {
		case xast.NodeTypeAccess:
			path, ok = accessPath(v.Arg)
			path += "." + string(v.Value)
		case xast.NodeTypeHas:
			path, ok = accessPath(v.Arg)
			path += "." + string(v.Value)
			if ok {
				r.tests = append(r.tests, path)
			}
		case xast.NodeTypeGetTag:
			path, ok = tagPath(v.Left, v.Right)
			if ok {
				xast.Inspect(xast.NewNode(v.Right), visit)
			}
		case xast.NodeTypeHasTag:
			path, ok = tagPath(v.Left, v.Right)
			if ok {
				xast.Inspect(xast.NewNode(v.Right), visit)
			}
		case xast.NodeTypeVariable:
			path, ok = string(v.Name), true
		}
		if !ok {
			return true
		}
		root, rest, _ := strings.Cut(path, ".")
		switch root {
		case "context":
			fields[path] = true
			attr, _, _ := strings.Cut(rest, ".")
			if a, known := attrByName[attr]; known {
				r.context |= 1 << a
			} else {
				r.context = allAttrs
			}
		case "resource":
			// The bare resource may be only its uid (resource == …), but it may also be where an
			// attribute is read from (if … then resource else …).host: build the attributes.
			r.resource = true
			if rest != "" {
				fields[path] = true
			}
		}
		return false
	}
	for _, c := range p.AST().Conditions {
		xast.Inspect(xast.NewNode(c.Body), visit)
	}
	r.fields = make([]string, 0, len(fields))
	for f := range fields {
		r.fields = append(r.fields, f)
	}
	slices.Sort(r.fields)
	return r
}

// accessPath renders a chain of attribute accesses on a variable ("context.json"), or reports
// false for anything else.
func accessPath(n xast.IsNode) (string, bool) {
	switch v := n.(type) {
	case xast.NodeTypeVariable:
		return string(v.Name), true
	case xast.NodeTypeAccess:
		p, ok := accessPath(v.Arg)
		return p + "." + string(v.Value), ok
	}
	return "", false
}

// tagPath renders getTag/hasTag on an access chain: the tag by its literal name, or "*".
func tagPath(entity, tag xast.IsNode) (string, bool) {
	p, ok := accessPath(entity)
	if !ok {
		return "", false
	}
	if v, lit := tag.(xast.NodeValue); lit {
		if s, isString := v.Value.(types.String); isString {
			return p + "." + string(s), true
		}
	}
	return p + ".*", true
}

// mergeFields returns the sorted union of the fields of the given policies.
func mergeFields(ps []*policy) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.reads.fields...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// checkHas refuses a `has` test that can never be true under the schema: an attribute the context,
// the resource or Firma::Json does not declare (a misspelling), or one of an entity that has tags
// and no attributes. Deeper paths are the validator's.
func (s *Schema) checkHas(path string) error {
	parts := strings.Split(path, ".")
	var shape map[string]bool
	var what string
	switch {
	case len(parts) == 2 && parts[0] == "context":
		shape, what = s.contextNames, "the context"
	case len(parts) == 2 && parts[0] == "resource":
		shape, what = s.shapeNames(ResourceType), string(ResourceType)
	case len(parts) == 3 && parts[0] == "context" && parts[1] == contextAttrs[attrJSON].name:
		shape, what = s.shapeNames(JSONType), string(JSONType)
	case len(parts) == 3 && parts[0] == "context":
		if a, ok := attrByName[parts[1]]; ok {
			if et, isEntity := contextAttrs[a].typ.(resolved.EntityType); isEntity {
				return fmt.Errorf("%s has no attributes, only tags: write context.%s.hasTag(%q)", et, parts[1], parts[2])
			}
		}
		return nil
	default:
		return nil
	}
	if shape[parts[len(parts)-1]] {
		return nil
	}
	hint := ""
	if what == string(JSONType) {
		hint = fmt.Sprintf("; a body field it does not type is a tag: context.json.hasTag(%q)", parts[2])
	}
	return fmt.Errorf("`%s has %s` is never true: %s declares no attribute %q%s", strings.Join(parts[:len(parts)-1], "."), parts[len(parts)-1], what, parts[len(parts)-1], hint)
}
