package policies

import (
	"fmt"
	"math/bits"

	"github.com/cedar-policy/cedar-go/types"
	"github.com/cedar-policy/cedar-go/x/exp/schema/resolved"
)

// ctxAttr is one attribute of the Cedar context firma fills. A decision builds only the attributes
// its candidate policies read, so what costs (parsing the body, the query, a session snapshot) is
// paid only when a policy asks for it.
type ctxAttr uint8

const (
	attrSessionID ctxAttr = iota
	attrTimestamp
	attrTransport
	attrPID
	attrExe
	attrUID
	attrCgroup
	attrBodySize
	attrContentType
	attrQuery
	attrQueryParams
	attrHeaders
	attrJSON
	attrGitService
	attrGitOwner
	attrGitRepo
	attrGitRefs
	attrGitDelete
	attrGitForce
	attrActionCount
	attrDenyCount
	attrPriorClasses
	attrLastResource
	attrSessionDuration
	attrActionsMinute
	attrActionsHour
	numAttrs
)

// attrMask is a set of context attributes.
type attrMask uint32

const allAttrs attrMask = 1<<numAttrs - 1

func (m attrMask) has(a ctxAttr) bool { return m&(1<<a) != 0 }

func maskOf(attrs ...ctxAttr) attrMask {
	var m attrMask
	for _, a := range attrs {
		m |= 1 << a
	}
	return m
}

var (
	// bodyAttrs need the buffered body (or, for body_size, at least its length).
	bodyAttrs    = maskOf(attrBodySize, attrJSON)
	queryAttrs   = maskOf(attrQuery, attrQueryParams)
	gitAttrs     = maskOf(attrGitService, attrGitOwner, attrGitRepo, attrGitRefs, attrGitDelete, attrGitForce)
	sessionAttrs = maskOf(attrActionCount, attrDenyCount, attrPriorClasses, attrLastResource,
		attrSessionDuration, attrActionsMinute, attrActionsHour)
)

// The entity types that context attributes refer to: open-ended maps are entity tags in Cedar.
const (
	QueryType   = types.EntityType("Firma::Query")
	HeadersType = types.EntityType("Firma::Headers")
	JSONType    = types.EntityType("Firma::Json")
	CountsType  = types.EntityType("Firma::Counts")
)

var (
	queryUID        = types.NewEntityUID(QueryType, "request")
	headersUID      = types.NewEntityUID(HeadersType, "request")
	jsonUID         = types.NewEntityUID(JSONType, "request")
	minuteCountsUID = types.NewEntityUID(CountsType, "last_minute")
	hourCountsUID   = types.NewEntityUID(CountsType, "last_hour")
)

var setOfStrings = resolved.SetType{Element: resolved.StringType{}}

// contextAttrs names every context attribute and the type the schema must give it.
var contextAttrs = [numAttrs]struct {
	name string
	typ  resolved.IsType
}{
	attrSessionID:       {"session_id", resolved.StringType{}},
	attrTimestamp:       {"timestamp_ms", resolved.LongType{}},
	attrTransport:       {"raw_transport", resolved.StringType{}},
	attrPID:             {"pid", resolved.LongType{}},
	attrExe:             {"exe", resolved.StringType{}},
	attrUID:             {"uid", resolved.LongType{}},
	attrCgroup:          {"cgroup", resolved.StringType{}},
	attrBodySize:        {"body_size", resolved.LongType{}},
	attrContentType:     {"content_type", resolved.StringType{}},
	attrQuery:           {"query", resolved.EntityType(QueryType)},
	attrQueryParams:     {"query_params", setOfStrings},
	attrHeaders:         {"headers", resolved.EntityType(HeadersType)},
	attrJSON:            {"json", resolved.EntityType(JSONType)},
	attrGitService:      {"git_service", resolved.StringType{}},
	attrGitOwner:        {"git_owner", resolved.StringType{}},
	attrGitRepo:         {"git_repo", resolved.StringType{}},
	attrGitRefs:         {"git_refs", setOfStrings},
	attrGitDelete:       {"git_delete", resolved.BoolType{}},
	attrGitForce:        {"git_force", resolved.BoolType{}},
	attrActionCount:     {"action_count", resolved.LongType{}},
	attrDenyCount:       {"deny_count", resolved.LongType{}},
	attrPriorClasses:    {"prior_action_classes", setOfStrings},
	attrLastResource:    {"last_resource", resolved.StringType{}},
	attrSessionDuration: {"session_duration_s", resolved.LongType{}},
	attrActionsMinute:   {"actions_last_minute", resolved.EntityType(CountsType)},
	attrActionsHour:     {"actions_last_hour", resolved.EntityType(CountsType)},
}

var attrByName = func() map[string]ctxAttr {
	m := make(map[string]ctxAttr, numAttrs)
	for i, a := range contextAttrs {
		m[a.name] = ctxAttr(i)
	}
	return m
}()

// tagEntities are the entity types context attributes refer to, with the type of their tags.
var tagEntities = map[types.EntityType]resolved.IsType{
	QueryType:   setOfStrings,
	HeadersType: resolved.StringType{},
	JSONType:    resolved.StringType{},
	CountsType:  resolved.LongType{},
}

// jsonFields are the typed attributes of Firma::Json: the common LLM-API request fields.
var jsonFields = map[string]resolved.IsType{
	"model":                 resolved.StringType{},
	"max_tokens":            resolved.LongType{},
	"max_completion_tokens": resolved.LongType{},
	"max_output_tokens":     resolved.LongType{},
	"stream":                resolved.BoolType{},
	"temperature":           resolved.ExtensionType("decimal"),
	"top_p":                 resolved.ExtensionType("decimal"),
	"top_k":                 resolved.LongType{},
	"n":                     resolved.LongType{},
	"seed":                  resolved.LongType{},
	"frequency_penalty":     resolved.ExtensionType("decimal"),
	"presence_penalty":      resolved.ExtensionType("decimal"),
	"user":                  resolved.StringType{},
	"store":                 resolved.BoolType{},
	"service_tier":          resolved.StringType{},
	"reasoning_effort":      resolved.StringType{},
	"parallel_tool_calls":   resolved.BoolType{},
}

// checkContext reports how an action's context type differs from what firma fills, one problem per
// attribute, so that a replaced schema fails at load with what to fix.
func checkContext(ctx resolved.RecordType) []error {
	var errs []error
	for _, a := range contextAttrs {
		attr, ok := ctx[types.String(a.name)]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("context lacks %s: %s", a.name, typeName(a.typ)))
		case attr.Optional:
			errs = append(errs, fmt.Errorf("context attribute %s must not be optional", a.name))
		case !sameType(attr.Type, a.typ):
			errs = append(errs, fmt.Errorf("context attribute %s must be a %s, not a %s", a.name, typeName(a.typ), typeName(attr.Type)))
		}
	}
	for name, attr := range ctx {
		if _, known := attrByName[string(name)]; !known && !attr.Optional {
			errs = append(errs, fmt.Errorf("context attribute %s is not one firma fills; make it optional or remove it", name))
		}
	}
	return errs
}

// checkTagEntities checks the entity types the context refers to: declared, with tags of the type
// firma fills, and (for Json) only optional attributes firma knows with the types it gives them.
func checkTagEntities(s *resolved.Schema) []error {
	var errs []error
	for et, tags := range tagEntities {
		ent, ok := s.Entities[et]
		if !ok {
			errs = append(errs, fmt.Errorf("entity type %s is not declared (want: entity %s tags %s)", et, et, typeName(tags)))
			continue
		}
		if ent.Tags == nil || !sameType(ent.Tags, tags) {
			errs = append(errs, fmt.Errorf("entity type %s must have tags %s", et, typeName(tags)))
		}
		for name, attr := range ent.Shape {
			want, known := jsonFields[string(name)]
			switch {
			case et != JSONType || !known:
				errs = append(errs, fmt.Errorf("%s attribute %q is not one firma fills", et, name))
			case !attr.Optional:
				errs = append(errs, fmt.Errorf("%s attribute %q must be optional: a body may lack it", et, name))
			case !sameType(attr.Type, want):
				errs = append(errs, fmt.Errorf("%s attribute %q must be a %s", et, name, typeName(want)))
			}
		}
	}
	return errs
}

func sameType(a, b resolved.IsType) bool {
	if sa, ok := a.(resolved.SetType); ok {
		sb, ok := b.(resolved.SetType)
		return ok && sameType(sa.Element, sb.Element)
	}
	if _, ok := a.(resolved.RecordType); ok {
		return false
	}
	return a == b
}

func typeName(t resolved.IsType) string {
	switch t := t.(type) {
	case resolved.StringType:
		return "String"
	case resolved.LongType:
		return "Long"
	case resolved.BoolType:
		return "Bool"
	case resolved.SetType:
		return "Set<" + typeName(t.Element) + ">"
	case resolved.EntityType:
		return string(t)
	case resolved.ExtensionType:
		return string(t)
	case resolved.RecordType:
		return "record"
	}
	return fmt.Sprintf("%T", t)
}

// attrNames lists the names of the attributes in m, for messages.
func (m attrMask) names() []string {
	out := make([]string, 0, bits.OnesCount32(uint32(m)))
	for a := ctxAttr(0); a < numAttrs; a++ {
		if m.has(a) {
			out = append(out, contextAttrs[a].name)
		}
	}
	return out
}
