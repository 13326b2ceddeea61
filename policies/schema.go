package policies

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
	"github.com/cedar-policy/cedar-go/x/exp/schema"
	"github.com/cedar-policy/cedar-go/x/exp/schema/resolved"
	"github.com/cedar-policy/cedar-go/x/exp/schema/validate"
)

// The Cedar entity types firma builds every request from.
const (
	AgentType    = types.EntityType("Firma::Agent")
	ActionType   = types.EntityType("Firma::Action")
	ResourceType = types.EntityType("Firma::Resource")
)

// Schema is a parsed and resolved Cedar schema that firma can evaluate requests under: it declares
// the Agent and Resource entity types with the attributes the sidecar fills, and action classes whose
// context accepts the sidecar's context record. Safe for concurrent use; never modified after load.
type Schema struct {
	name      string
	source    []byte
	resolved  *resolved.Schema
	validator *validate.Validator
	// classes are the concrete action classes (declared with appliesTo), sorted.
	classes []string
	// actions holds every action entity (groups included) with its transitive ancestors as parents,
	// so that `action in Firma::Action::"model"` needs one lookup at evaluation time.
	actions types.EntityMap
	// within maps an action uid to the action classes it covers in an `action in` scope: itself and
	// every action below it.
	within map[types.EntityUID][]string
	// contextNames are the context attributes any action declares.
	contextNames map[string]bool
}

// shapeNames lists the attributes an entity type declares.
func (s *Schema) shapeNames(et types.EntityType) map[string]bool {
	out := map[string]bool{}
	for name := range s.resolved.Entities[et].Shape {
		out[string(name)] = true
	}
	return out
}

// EmbeddedSchema returns firma.cedarschema as built into the binary.
func EmbeddedSchema() *Schema { return loadEmbedded().schema }

// LoadSchema reads and checks a user schema (Cedar schema syntax) that replaces the embedded one.
func LoadSchema(path string) (*Schema, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading schema: %w", err)
	}
	return ParseSchema(path, data)
}

// ParseSchema parses a schema in Cedar schema syntax; name is used in error messages.
func ParseSchema(name string, data []byte) (*Schema, error) {
	var s schema.Schema
	s.SetFilename(name)
	if err := s.UnmarshalCedar(data); err != nil {
		return nil, newLoadError(ErrInvalidSchema, []Problem{schemaProblem(name, err)})
	}
	res, err := s.Resolve()
	if err != nil {
		return nil, newLoadError(ErrInvalidSchema, []Problem{{File: name, Msg: err.Error()}})
	}
	out := &Schema{
		name:      name,
		source:    slices.Clone(data),
		resolved:  res,
		validator: validate.New(res),
		actions:   types.EntityMap{},
		within:    map[types.EntityUID][]string{},
	}
	if errs := out.check(); len(errs) > 0 {
		problems := make([]Problem, len(errs))
		for i, err := range errs {
			problems[i] = Problem{File: name, Msg: err.Error()}
		}
		return nil, newLoadError(ErrInvalidSchema, problems)
	}
	out.index()
	return out, nil
}

// Name is the file the schema was read from ("firma.cedarschema" for the embedded one).
func (s *Schema) Name() string { return s.name }

// Source returns the schema text as loaded.
func (s *Schema) Source() []byte { return slices.Clone(s.source) }

// ActionClasses returns the concrete action classes, sorted: the names a mapping rule may use.
func (s *Schema) ActionClasses() []string { return slices.Clone(s.classes) }

// HasActionClass reports whether class is a concrete action class of the schema.
func (s *Schema) HasActionClass(class string) bool {
	_, ok := slices.BinarySearch(s.classes, class)
	return ok
}

// requiredResource lists the Resource attributes the sidecar always sets, with their types.
var requiredResource = map[types.String]resolved.IsType{
	"host":   resolved.StringType{},
	"path":   resolved.StringType{},
	"method": resolved.StringType{},
	"port":   resolved.LongType{},
}

// schemaPos matches the "name:line:col: " the schema parser starts its messages with.
var schemaPos = regexp.MustCompile(`^(.*):(\d+):(\d+): (.*)$`)

func schemaProblem(name string, err error) Problem {
	if m := schemaPos.FindStringSubmatch(err.Error()); m != nil && m[1] == name {
		line, _ := strconv.Atoi(m[2])
		col, _ := strconv.Atoi(m[3])
		return Problem{File: name, Line: line, Column: col, Msg: m[4]}
	}
	return Problem{File: name, Msg: err.Error()}
}

// check refuses a schema that firma's requests would not satisfy, so that a replaced schema fails at
// load instead of making every decision an evaluation error.
func (s *Schema) check() []error {
	if _, ok := s.resolved.Entities[AgentType]; !ok {
		return []error{fmt.Errorf("entity type %s is not declared", AgentType)}
	}
	res, ok := s.resolved.Entities[ResourceType]
	if !ok {
		return []error{fmt.Errorf("entity type %s is not declared", ResourceType)}
	}
	var errs []error
	for name, want := range requiredResource {
		attr, ok := res.Shape[name]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s has no attribute %q", ResourceType, name))
		case attr.Optional:
			errs = append(errs, fmt.Errorf("%s attribute %q must not be optional", ResourceType, name))
		case attr.Type != want:
			errs = append(errs, fmt.Errorf("%s attribute %q must be a %s", ResourceType, name, typeName(want)))
		}
	}
	if attr, ok := res.Shape["provider"]; ok && attr.Type != (resolved.StringType{}) {
		errs = append(errs, fmt.Errorf("%s attribute \"provider\" must be a String", ResourceType))
	}
	errs = append(errs, checkTagEntities(s.resolved)...)
	sample := types.Request{
		Principal: types.NewEntityUID(AgentType, "sample"),
		Resource:  types.NewEntityUID(ResourceType, "example.com/"),
	}
	f := &facts{n: &normalized{}, r: &Request{}, lim: &limits{maxBody: DefaultMaxBodyBytes}, schema: s}
	sample.Context, _, _ = f.context(allAttrs)
	for uid, a := range s.resolved.Actions {
		if uid.Type != ActionType || a.AppliesTo == nil {
			continue
		}
		sample.Action = uid
		if ctxErrs := checkContext(a.AppliesTo.Context); len(ctxErrs) > 0 {
			for _, err := range ctxErrs {
				errs = append(errs, fmt.Errorf("action %q cannot take firma's requests: %v", string(uid.ID), err))
			}
			continue
		}
		if err := s.validator.Request(sample); err != nil {
			errs = append(errs, fmt.Errorf("action %q cannot take firma's requests: %v", string(uid.ID), err))
			continue
		}
		s.classes = append(s.classes, string(uid.ID))
	}
	if len(s.classes) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("no action of Firma::Action applies to Firma::Agent and Firma::Resource"))
	}
	sort.Strings(s.classes)
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errs
}

// index computes the action hierarchy once: every action's ancestors and every group's members.
func (s *Schema) index() {
	ancestors := func(uid types.EntityUID) []types.EntityUID {
		var out []types.EntityUID
		seen := map[types.EntityUID]bool{uid: true}
		todo := []types.EntityUID{uid}
		for len(todo) > 0 {
			cur := todo[len(todo)-1]
			todo = todo[:len(todo)-1]
			for p := range s.resolved.Actions[cur].Entity.Parents.All() {
				if !seen[p] {
					seen[p] = true
					out = append(out, p)
					todo = append(todo, p)
				}
			}
		}
		return out
	}
	s.contextNames = map[string]bool{}
	for uid, a := range s.resolved.Actions {
		if a.AppliesTo != nil {
			for name := range a.AppliesTo.Context {
				s.contextNames[string(name)] = true
			}
		}
		anc := ancestors(uid)
		s.actions[uid] = cedar.Entity{UID: uid, Parents: types.NewEntityUIDSet(anc...)}
		if uid.Type != ActionType || !s.HasActionClass(string(uid.ID)) {
			continue
		}
		for _, group := range append(anc, uid) {
			s.within[group] = append(s.within[group], string(uid.ID))
		}
	}
	for _, members := range s.within {
		sort.Strings(members)
	}
}

// schemaFor returns the schema a loader should use: s, or the embedded one when s is nil.
func schemaFor(s *Schema) *Schema {
	if s == nil {
		return EmbeddedSchema()
	}
	return s
}
