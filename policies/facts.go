package policies

import (
	"fmt"
	"time"

	"github.com/cedar-policy/cedar-go/types"
)

// facts is everything one decision can tell Cedar, derived on demand: a decision builds only the
// context attributes its candidate policies read, so a request pays for parsing its body, its
// query or a session snapshot only when a policy asks.
type facts struct {
	n        *normalized
	r        *Request
	now      time.Time
	lim      *limits
	schema   *Schema
	git      gitFacts
	sessions *Sessions

	decoded    []byte // the content-decoded body, once body() ran
	decodedCut bool
	decodedErr error
	decodeDone bool
}

// body returns the request body with its Content-Encoding undone, or why it cannot be had. cut
// says it is only a prefix: the body was over max_body_bytes, as sent or decoded.
func (f *facts) body() (body []byte, cut bool, err error) {
	if f.decodeDone {
		return f.decoded, f.decodedCut, f.decodedErr
	}
	f.decodeDone = true
	c := &f.r.Content
	switch {
	case c.Body == nil && c.BodySize == 0:
	case c.Body == nil:
		f.decodedErr = errBodyNotGiven
	default:
		f.decoded, f.decodedCut, f.decodedErr = decodeBody(c.Header, c.Body, f.lim.maxBody, c.BodyTruncated)
	}
	return f.decoded, f.decodedCut, f.decodedErr
}

// bodySize is context.body_size: the length as sent. A body-size policy cannot decide on a body
// whose length is unknown or over max_body_bytes.
func (f *facts) bodySize() (int64, error) {
	c := &f.r.Content
	switch {
	case f.n.kind != intentHTTP:
		return 0, nil
	case c.BodyTruncated:
		return 0, errBodyTooLarge
	case c.Body != nil:
		return int64(len(c.Body)), nil
	case c.BodySize < 0:
		return 0, errBodyNotGiven
	}
	return c.BodySize, nil
}

func (f *facts) json() (types.Entity, error) {
	if f.n.kind != intentHTTP {
		return types.Entity{UID: jsonUID}, nil
	}
	if f.r.Content.BodyTruncated {
		return types.Entity{}, errBodyTooLarge
	}
	body, cut, err := f.body()
	switch {
	case err != nil:
		return types.Entity{}, err
	case cut:
		return types.Entity{}, fmt.Errorf("%w: decompresses to more than %d bytes", errBodyTooLarge, f.lim.maxBody)
	}
	return jsonEntity(body, MediaType(f.r.Content.Header))
}

// session is the session state Cedar sees: the request's own, or the tracker's snapshot.
func (f *facts) session() SessionState {
	if f.r.Session != nil {
		return *f.r.Session
	}
	if f.sessions == nil {
		return SessionState{}
	}
	return f.sessions.Snapshot(f.n.agent, f.n.session, f.now)
}

// countsEntity exposes per-class counts by class and by every group above the class.
func (f *facts) countsEntity(uid types.EntityUID, byClass map[string]int64) types.Entity {
	tags := types.RecordMap{}
	add := func(key types.String, n int64) {
		prev, _ := tags[key].(types.Long)
		tags[key] = prev + types.Long(n)
	}
	for class, n := range byClass {
		add(types.String(class), n)
		action := f.schema.actions[types.NewEntityUID(ActionType, types.String(class))]
		for group := range action.Parents.All() {
			add(types.String(group.ID), n)
		}
	}
	return types.Entity{UID: uid, Tags: record(tags)}
}

// context builds the attributes in mask and the entities they refer to.
func (f *facts) context(mask attrMask) (types.Record, []types.Entity, error) {
	n := f.n
	rec := make(types.RecordMap, 8)
	var ents []types.Entity
	set := func(a ctxAttr, v types.Value) { rec[types.String(contextAttrs[a].name)] = v }
	for a := attrSessionID; a <= attrCgroup; a++ {
		if !mask.has(a) {
			continue
		}
		switch a {
		case attrSessionID:
			set(a, types.String(n.session))
		case attrTimestamp:
			set(a, types.Long(f.now.UnixMilli()))
		case attrTransport:
			set(a, types.String(n.transport))
		case attrPID:
			set(a, types.Long(n.pid))
		case attrExe:
			set(a, types.String(n.exe))
		case attrUID:
			set(a, types.Long(n.uid))
		case attrCgroup:
			set(a, types.String(n.cgroup))
		}
	}
	if mask&gitAttrs != 0 {
		g := &f.git
		refVals := make([]types.Value, len(g.refs))
		for i, r := range g.refs {
			refVals[i] = types.String(r)
		}
		set(attrGitService, types.String(g.service))
		set(attrGitOwner, types.String(g.owner))
		set(attrGitRepo, types.String(g.repo))
		set(attrGitRefs, types.NewSet(refVals...))
		set(attrGitDelete, types.Boolean(g.delete))
		set(attrGitForce, types.Boolean(g.force))
	}
	if mask.has(attrContentType) {
		set(attrContentType, types.String(MediaType(f.r.Content.Header)))
	}
	if mask.has(attrHeaders) {
		e := headerEntity(f.r.Content.Header, f.lim.hidden)
		set(attrHeaders, e.UID)
		ents = append(ents, e)
	}
	if mask&queryAttrs != 0 {
		q, err := parseQuery(n.query)
		if err != nil {
			return types.Record{}, nil, err
		}
		e := q.entity()
		set(attrQuery, e.UID)
		set(attrQueryParams, q.params())
		ents = append(ents, e)
	}
	if mask.has(attrBodySize) {
		size, err := f.bodySize()
		if err != nil {
			return types.Record{}, nil, err
		}
		set(attrBodySize, types.Long(size))
	}
	if mask.has(attrJSON) {
		e, err := f.json()
		if err != nil {
			return types.Record{}, nil, err
		}
		set(attrJSON, e.UID)
		ents = append(ents, e)
	}
	if mask&sessionAttrs != 0 {
		st := f.session()
		classes := make([]types.Value, len(st.PriorActionClasses))
		for i, c := range st.PriorActionClasses {
			classes[i] = types.String(c)
		}
		set(attrActionCount, types.Long(st.ActionCount))
		set(attrDenyCount, types.Long(st.DenyCount))
		set(attrPriorClasses, types.NewSet(classes...))
		set(attrLastResource, types.String(st.LastResource))
		set(attrSessionDuration, types.Long(int64(st.Duration/time.Second)))
		set(attrActionsMinute, minuteCountsUID)
		set(attrActionsHour, hourCountsUID)
		if mask.has(attrActionsMinute) {
			ents = append(ents, f.countsEntity(minuteCountsUID, st.LastMinute))
		}
		if mask.has(attrActionsHour) {
			ents = append(ents, f.countsEntity(hourCountsUID, st.LastHour))
		}
	}
	return types.NewRecord(rec), ents, nil
}

// record builds a Cedar record; an empty one costs nothing (types.NewRecord copies and sorts).
func record(m types.RecordMap) types.Record {
	if len(m) == 0 {
		return types.Record{}
	}
	return types.NewRecord(m)
}
