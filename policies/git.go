package policies

import (
	"bytes"
	"compress/zlib"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strconv"
	"strings"
)

// The git smart-HTTP services.
const (
	GitUploadPack  = "git-upload-pack"  // clone, fetch: code.read
	GitReceivePack = "git-receive-pack" // push: code.write, or code.destructive
)

// The action classes git requests are classified as.
const (
	ClassCodeRead        = "code.read"
	ClassCodeWrite       = "code.write"
	ClassCodeDestructive = "code.destructive"
)

// GitConfig is [sidecar.policy.git]: which hosts speak git smart HTTP, and which branches a push
// may not rewrite.
type GitConfig struct {
	// Hosts are host patterns (as in intercept_hosts) whose smart-HTTP requests are classified by
	// what they do, before the mapping rules. nil: DefaultGitHosts; empty: none.
	Hosts []string `toml:"hosts"`
	// ProtectedBranches are globs ('*' matches any run of characters, '/' included) over branch
	// names ("main", "release/*") or, starting with "refs/", over full ref names ("refs/tags/*").
	// Matched case-insensitively. nil: DefaultProtectedBranches; empty: none.
	ProtectedBranches []string `toml:"protected_branches"`
}

// Defaults of [sidecar.policy.git].
var (
	DefaultGitHosts          = []string{"github.com", "gitlab.com", "bitbucket.org", "codeberg.org"}
	DefaultProtectedBranches = []string{"main", "master", "release/*"}
)

// gitRules is a GitConfig, parsed.
type gitRules struct {
	hosts     []HostPattern
	protected []glob
}

func (c GitConfig) parse() (*gitRules, error) {
	hosts, branches := c.Hosts, c.ProtectedBranches
	if hosts == nil {
		hosts = DefaultGitHosts
	}
	if branches == nil {
		branches = DefaultProtectedBranches
	}
	g := &gitRules{}
	var errs []error
	for _, h := range hosts {
		p, err := ParseHostPattern(h)
		if err != nil {
			errs = append(errs, fmt.Errorf("sidecar.policy.git.hosts: %w", err))
			continue
		}
		g.hosts = append(g.hosts, p)
	}
	for _, b := range branches {
		if b == "" || strings.ContainsAny(b, " \t\n\x00") {
			errs = append(errs, fmt.Errorf("sidecar.policy.git.protected_branches: %q is not a branch glob", b))
			continue
		}
		g.protected = append(g.protected, newGlob(strings.ToLower(b)))
	}
	return g, errors.Join(errs...)
}

func (g *gitRules) isGitHost(host string) bool {
	for _, p := range g.hosts {
		if p.Match(host) {
			return true
		}
	}
	return false
}

// isProtected reports whether a ref is a protected branch (or matches a "refs/…" pattern).
func (g *gitRules) isProtected(ref string) bool {
	ref = strings.ToLower(ref)
	branch, isBranch := strings.CutPrefix(ref, "refs/heads/")
	for _, p := range g.protected {
		if strings.HasPrefix(p.parts[0], "refs/") {
			if p.match(ref) {
				return true
			}
		} else if isBranch && p.match(branch) {
			return true
		}
	}
	return false
}

// GitRequest is a git smart-HTTP request, classified.
type GitRequest struct {
	Service string // GitUploadPack or GitReceivePack
	// Owner and Repo name the repository, lowercased (hosts resolve them case-insensitively): the
	// path's segments before the last ("octo-org", or "group/subgroup"), and the last without
	// ".git".
	Owner, Repo string
	// Push marks the POST that carries a push (its ref updates and pack), as opposed to the ref
	// advertisement that precedes it.
	Push    bool
	Updates []RefUpdate // a push's ref updates, in the order sent
	// PackProblem says why the pack proved nothing, when it did not parse ("" otherwise).
	PackProblem string
}

// RefUpdate is one command of a push: set Ref from Old to New.
type RefUpdate struct {
	Ref, Old, New string
	Create        bool // Old is the zero id
	Delete        bool // New is the zero id
	// FastForward: New descends from Old, proved by the commits in the pack. False for creates and
	// deletes, and whenever the pack does not prove it (thin, truncated, unparsable).
	FastForward bool
	Protected   bool // a protected branch
}

// Force reports whether the update rewrites history as far as firma can tell: an update of an
// existing ref that the pack does not prove a fast-forward.
func (u RefUpdate) Force() bool { return !u.Create && !u.Delete && !u.FastForward }

// Destructive reports whether a push deletes a ref or force-updates a protected branch.
func (g *GitRequest) Destructive() bool {
	for _, u := range g.Updates {
		if u.Delete || u.Protected && u.Force() {
			return true
		}
	}
	return false
}

// ActionClass is code.read for fetches and clones, code.write for pushes and code.destructive for
// destructive pushes.
func (g *GitRequest) ActionClass() string {
	switch {
	case g.Service != GitReceivePack:
		return ClassCodeRead
	case g.Destructive():
		return ClassCodeDestructive
	}
	return ClassCodeWrite
}

// gitFacts are the git attributes of the Cedar context.
type gitFacts struct {
	service, owner, repo string
	refs                 []string
	delete, force        bool
}

func (g *GitRequest) facts() gitFacts {
	f := gitFacts{service: g.Service, owner: g.Owner, repo: g.Repo}
	for _, u := range g.Updates {
		f.refs = append(f.refs, u.Ref)
		f.delete = f.delete || u.Delete
		f.force = f.force || u.Force()
	}
	return f
}

// ClassifyGit recognizes a git smart-HTTP request by its method, normalized path and raw query:
// GET <repo>/info/refs?service=git-upload-pack|git-receive-pack (a query naming receive-pack at all,
// or one that does not parse, is receive-pack), POST <repo>/git-upload-pack and POST
// <repo>/git-receive-pack. A GET of info/refs without a service (the dumb protocol) is a fetch.
// Failing closed, any POST whose path has a segment starting with "git-receive-pack" in any case
// ("git-receive-pack;x", as a server that strips path parameters would route it) is a push, whose
// body must then parse as one.
func ClassifyGit(method, path, rawQuery string) (GitRequest, bool) {
	var g GitRequest
	var prefix string
	lower := strings.ToLower(path)
	method = strings.ToUpper(method)
	if method == "POST" {
		if i := strings.Index(lower, "/"+GitReceivePack); i >= 0 {
			prefix, g.Service, g.Push = path[:i], GitReceivePack, true
		}
	}
	switch {
	case g.Push:
	case (method == "GET" || method == "HEAD") && strings.HasSuffix(path, "/info/refs"):
		prefix = strings.TrimSuffix(path, "/info/refs")
		g.Service = GitUploadPack
		q, err := parseQuery(rawQuery)
		if err != nil || slices.Contains(q.values["service"], GitReceivePack) {
			g.Service = GitReceivePack
		}
	case method == "POST" && strings.HasSuffix(path, "/"+GitUploadPack):
		prefix, g.Service = strings.TrimSuffix(path, "/"+GitUploadPack), GitUploadPack
	default:
		return g, false
	}
	prefix = strings.ToLower(strings.Trim(prefix, "/"))
	if prefix == "" && !g.Push {
		return g, false
	}
	i := strings.LastIndexByte(prefix, '/')
	g.Owner, g.Repo = prefix[:max(i, 0)], strings.TrimSuffix(prefix[i+1:], ".git")
	return g, true
}

// errPush marks a receive-pack body that cannot be read as ref updates.
var errPush = errors.New("malformed git push")

// ParsePush reads the ref updates of a receive-pack request body (content-decoded) and checks,
// with the commits of the pack that follows, which updates are fast-forwards. truncated says the
// body is only a prefix of the real one: the updates must all be in it, but the pack may be cut
// short (updates it no longer proves are then not fast-forwards). The pack is inflated within a
// budget of inflateBudget bytes; past it, the rest proves nothing. protected decides which refs
// are protected branches (nil: none).
func ParsePush(body []byte, truncated bool, inflateBudget int64, protected func(ref string) bool) ([]RefUpdate, string, error) {
	updates, caps, rest, err := parseCommands(body, truncated)
	if err != nil {
		return nil, "", err
	}
	hashLen := 20
	if slices.Contains(caps, "object-format=sha256") || len(updates) > 0 && len(updates[0].Old) == 64 {
		hashLen = 32
	}
	needPack := false
	for i := range updates {
		u := &updates[i]
		if len(u.Old) != 2*hashLen || len(u.New) != 2*hashLen {
			return nil, "", fmt.Errorf("%w: %s: object ids of mixed length", errPush, u.Ref)
		}
		u.Create, u.Delete = isZeroID(u.Old), isZeroID(u.New)
		if protected != nil {
			u.Protected = protected(u.Ref)
		}
		if u.Old == u.New && !u.Create {
			u.FastForward = true // a no-op
		}
		needPack = needPack || u.Force()
	}
	if !needPack {
		return updates, "", nil
	}
	commits, packErr := packCommits(rest, hashLen, truncated, inflateBudget)
	for i := range updates {
		u := &updates[i]
		if u.Force() {
			u.FastForward = descends(commits, u.New, u.Old)
		}
	}
	problem := ""
	if packErr != nil {
		problem = packErr.Error()
	}
	return updates, problem, nil
}

func isZeroID(id string) bool { return strings.Trim(id, "0") == "" }

// pktLine reads one pkt-line: its payload, or nil for a flush-pkt ("0000"), a delim-pkt ("0001")
// or a response-end-pkt ("0002").
func pktLine(b []byte) (payload, rest []byte, err error) {
	if len(b) < 4 {
		return nil, nil, io.ErrUnexpectedEOF
	}
	n, err := strconv.ParseUint(string(b[:4]), 16, 16)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: bad pkt-line length %q", errPush, b[:4])
	}
	switch {
	case n <= 2:
		return nil, b[4:], nil
	case n == 3:
		return nil, nil, fmt.Errorf("%w: bad pkt-line length %q", errPush, b[:4])
	case int(n) > len(b):
		return nil, nil, io.ErrUnexpectedEOF
	}
	return b[4:n], b[n:], nil
}

// parseCommands reads the command list of a receive-pack request: optional "shallow" lines, then
// "<old> <new> <ref>" lines (the first with NUL and the capabilities), a flush, and, when the
// push-options capability was asked for, push options up to another flush. A signed push carries
// its commands inside the push certificate instead. rest is what follows: the pack.
func parseCommands(body []byte, truncated bool) (updates []RefUpdate, caps []string, rest []byte, err error) {
	rest = body
	first, inCert, certBody := true, false, false
	for {
		var line []byte
		line, rest, err = pktLine(rest)
		if errors.Is(err, io.ErrUnexpectedEOF) {
			if truncated {
				return nil, nil, nil, fmt.Errorf("%w: the ref updates do not fit in max_body_bytes", errBodyTooLarge)
			}
			return nil, nil, nil, fmt.Errorf("%w: cut short in the ref updates", errPush)
		}
		if err != nil {
			return nil, nil, nil, err
		}
		if line == nil {
			if inCert {
				return nil, nil, nil, fmt.Errorf("%w: flush inside the push certificate", errPush)
			}
			break
		}
		text := strings.TrimSuffix(string(line), "\n")
		if first && !strings.HasPrefix(text, "shallow ") {
			// The capabilities follow a NUL on the first line after any "shallow" lines.
			first = false
			if cmd, capList, ok := strings.Cut(text, "\x00"); ok {
				caps = strings.Fields(capList)
				text = cmd
			}
			if text == "push-cert" {
				inCert = true
				continue
			}
		}
		switch {
		case inCert && !certBody:
			certBody = text == "" // the certificate's header ends at an empty line
			continue
		case inCert && text == "push-cert-end":
			inCert = false
			continue
		case inCert && strings.HasPrefix(text, "-----BEGIN "):
			certBody = false // the signature: skip to push-cert-end
			for {
				if line, rest, err = pktLine(rest); err != nil || line == nil {
					return nil, nil, nil, fmt.Errorf("%w: unterminated push certificate", errPush)
				}
				if strings.TrimSuffix(string(line), "\n") == "push-cert-end" {
					break
				}
			}
			inCert = false
			continue
		case strings.HasPrefix(text, "shallow ") && len(updates) == 0:
			continue
		}
		u, err := parseCommand(text)
		if err != nil {
			return nil, nil, nil, err
		}
		updates = append(updates, u)
	}
	if len(updates) == 0 {
		return nil, nil, nil, fmt.Errorf("%w: no ref updates", errPush)
	}
	if slices.Contains(caps, "push-options") {
		for {
			var line []byte
			if line, rest, err = pktLine(rest); err != nil {
				return nil, nil, nil, fmt.Errorf("%w: push options: %v", errPush, err)
			}
			if line == nil {
				break
			}
		}
	}
	return updates, caps, rest, nil
}

func parseCommand(text string) (RefUpdate, error) {
	f := strings.Split(text, " ")
	if len(f) != 3 || !isHexID(f[0]) || !isHexID(f[1]) || !strings.HasPrefix(f[2], "refs/") && f[2] != "HEAD" {
		return RefUpdate{}, fmt.Errorf("%w: bad ref update %q", errPush, abbreviate([]byte(text)))
	}
	return RefUpdate{Old: f[0], New: f[1], Ref: f[2]}, nil
}

func isHexID(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// Pack object types.
const (
	objCommit   = 1
	objTree     = 2
	objBlob     = 3
	objTag      = 4
	objOfsDelta = 6
	objRefDelta = 7
)

// packCommits reads the commit objects of a pack, resolving deltas whose base is a commit in the
// pack, and returns each commit's parents by id. It returns what it found before any problem
// (truncated or malformed pack, budget exhausted) together with that problem.
func packCommits(pack []byte, hashLen int, truncated bool, budget int64) (map[string][]string, error) {
	commits := map[string][]string{}
	if len(pack) < 12 || string(pack[:4]) != "PACK" {
		if truncated && len(pack) < 12 {
			return commits, errors.New("pack cut off by max_body_bytes")
		}
		return commits, errors.New("no pack")
	}
	if v := binary.BigEndian.Uint32(pack[4:8]); v != 2 && v != 3 {
		return commits, fmt.Errorf("pack version %d", v)
	}
	count := binary.BigEndian.Uint32(pack[8:12])
	newHash := func() hash.Hash {
		if hashLen == 32 {
			return sha256.New()
		}
		return sha1.New()
	}
	type kept struct {
		typ  int
		data []byte // commits (and deltas resolved to commits) only
	}
	byOffset := map[int]kept{}
	byID := map[string][]byte{} // commit contents by id, for REF_DELTA bases
	type pending struct {
		base  string
		delta []byte
	}
	var refDeltas []pending
	addCommit := func(data []byte) {
		h := newHash()
		fmt.Fprintf(h, "commit %d\x00", len(data))
		h.Write(data)
		id := hex.EncodeToString(h.Sum(nil))
		byID[id] = data
		commits[id] = commitParents(data)
	}
	pos := 12
	var spent int64
	var problem error
	for i := uint32(0); i < count; i++ {
		start := pos
		typ, size, n, err := objectHeader(pack[pos:])
		if err != nil {
			problem = fmt.Errorf("object %d: %w", i, err)
			break
		}
		pos += n
		var base kept
		var baseID string
		switch typ {
		case objOfsDelta:
			off, n, err := ofsDeltaOffset(pack[pos:])
			if err != nil || off > start-12 || off <= 0 {
				problem = fmt.Errorf("object %d: bad delta offset", i)
				break
			}
			pos += n
			base = byOffset[start-off]
		case objRefDelta:
			if len(pack)-pos < hashLen {
				problem = io.ErrUnexpectedEOF
				break
			}
			baseID = hex.EncodeToString(pack[pos : pos+hashLen])
			pos += hashLen
		case objCommit, objTree, objBlob, objTag:
		default:
			problem = fmt.Errorf("object %d: type %d", i, typ)
		}
		if problem != nil {
			break
		}
		if spent += size; spent > budget {
			problem = errors.New("pack inflates beyond the budget")
			break
		}
		// Keep the data of commits and of deltas that may produce one; inflate the rest to find
		// where the next object starts.
		keep := typ == objCommit || typ == objOfsDelta && base.typ == objCommit || typ == objRefDelta
		data, used, err := inflate(pack[pos:], size, keep)
		if err != nil {
			problem = fmt.Errorf("object %d: %w", i, err)
			break
		}
		pos += used
		switch {
		case typ == objCommit:
			byOffset[start] = kept{typ: objCommit, data: data}
			addCommit(data)
		case typ == objOfsDelta && base.typ == objCommit:
			out, err := applyDelta(base.data, data, budget-spent)
			spent += int64(len(out))
			if err != nil {
				problem = fmt.Errorf("object %d: %w", i, err)
				break
			}
			byOffset[start] = kept{typ: objCommit, data: out}
			addCommit(out)
		case typ == objRefDelta:
			if b, ok := byID[baseID]; ok {
				out, err := applyDelta(b, data, budget-spent)
				spent += int64(len(out))
				if err == nil {
					byOffset[start] = kept{typ: objCommit, data: out}
					addCommit(out)
				}
			} else {
				refDeltas = append(refDeltas, pending{baseID, data})
			}
		default:
			byOffset[start] = kept{typ: typ}
		}
		if problem != nil {
			break
		}
	}
	if problem != nil && truncated {
		problem = fmt.Errorf("pack cut off by max_body_bytes (%v)", problem)
	}
	// REF_DELTA bases may come later in the pack: resolve until nothing changes.
	for progress := true; progress && len(refDeltas) > 0; {
		progress = false
		left := refDeltas[:0]
		for _, p := range refDeltas {
			if b, ok := byID[p.base]; ok {
				out, err := applyDelta(b, p.delta, budget-spent)
				spent += int64(len(out))
				if err == nil {
					addCommit(out)
					progress = true
				}
				continue
			}
			left = append(left, p)
		}
		refDeltas = left
	}
	return commits, problem
}

// objectHeader reads a pack object's type and inflated size.
func objectHeader(b []byte) (typ int, size int64, n int, err error) {
	if len(b) == 0 {
		return 0, 0, 0, io.ErrUnexpectedEOF
	}
	c := b[0]
	typ, size, n = int(c>>4&7), int64(c&15), 1
	for shift := 4; c&0x80 != 0; shift += 7 {
		if n >= len(b) {
			return 0, 0, 0, io.ErrUnexpectedEOF
		}
		if shift > 56 {
			return 0, 0, 0, errors.New("object size overflows")
		}
		c = b[n]
		n++
		size |= int64(c&0x7f) << shift
	}
	return typ, size, n, nil
}

// ofsDeltaOffset reads an OFS_DELTA's distance back to its base.
func ofsDeltaOffset(b []byte) (off, n int, err error) {
	if len(b) == 0 {
		return 0, 0, io.ErrUnexpectedEOF
	}
	c := b[0]
	off, n = int(c&0x7f), 1
	for c&0x80 != 0 {
		if n >= len(b) {
			return 0, 0, io.ErrUnexpectedEOF
		}
		if off > 1<<48 {
			return 0, 0, errors.New("delta offset overflows")
		}
		c = b[n]
		n++
		off = (off+1)<<7 | int(c&0x7f)
	}
	return off, n, nil
}

// inflate decompresses the zlib stream at the start of b, which must inflate to exactly size
// bytes, and returns them (when keep) and how many bytes of b the stream took.
func inflate(b []byte, size int64, keep bool) ([]byte, int, error) {
	r := bytes.NewReader(b)
	zr, err := zlib.NewReader(r)
	if err != nil {
		return nil, 0, err
	}
	var out []byte
	var got int64
	if keep {
		buf := bytes.NewBuffer(make([]byte, 0, size))
		got, err = io.Copy(buf, io.LimitReader(zr, size+1))
		out = buf.Bytes()
	} else {
		got, err = io.Copy(io.Discard, io.LimitReader(zr, size+1))
	}
	if err != nil {
		return nil, 0, err
	}
	if got != size {
		return nil, 0, fmt.Errorf("inflates to %d bytes, header says %d", got, size)
	}
	// Read to the end of the stream so that the zlib checksum is consumed and checked.
	if n, err := zr.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		return nil, 0, errors.New("zlib stream longer than the object")
	}
	return out, len(b) - r.Len(), nil
}

// applyDelta applies git's delta format (source size, target size, copy and insert instructions).
// The result may be at most limit bytes.
func applyDelta(base, delta []byte, limit int64) ([]byte, error) {
	varint := func() (int, bool) {
		v, shift := 0, 0
		for len(delta) > 0 && shift < 56 {
			c := delta[0]
			delta = delta[1:]
			v |= int(c&0x7f) << shift
			if c&0x80 == 0 {
				return v, true
			}
			shift += 7
		}
		return 0, false
	}
	srcSize, ok1 := varint()
	dstSize, ok2 := varint()
	if !ok1 || !ok2 || srcSize != len(base) {
		return nil, errors.New("delta does not apply to its base")
	}
	if int64(dstSize) > limit {
		return nil, errors.New("delta result beyond the budget")
	}
	out := make([]byte, 0, dstSize)
	for len(delta) > 0 {
		op := delta[0]
		delta = delta[1:]
		switch {
		case op&0x80 != 0:
			var off, n int
			for bit := 0; bit < 7; bit++ {
				if op&(1<<bit) == 0 {
					continue
				}
				if len(delta) == 0 {
					return nil, errors.New("delta cut short")
				}
				if bit < 4 {
					off |= int(delta[0]) << (8 * bit)
				} else {
					n |= int(delta[0]) << (8 * (bit - 4))
				}
				delta = delta[1:]
			}
			if n == 0 {
				n = 0x10000
			}
			if off+n > len(base) || len(out)+n > dstSize {
				return nil, errors.New("delta copies out of range")
			}
			out = append(out, base[off:off+n]...)
		case op != 0:
			if int(op) > len(delta) || len(out)+int(op) > dstSize {
				return nil, errors.New("delta inserts out of range")
			}
			out = append(out, delta[:op]...)
			delta = delta[op:]
		default:
			return nil, errors.New("delta opcode 0")
		}
	}
	if len(out) != dstSize {
		return nil, errors.New("delta result has the wrong size")
	}
	return out, nil
}

// commitParents reads the parent ids from a commit's header.
func commitParents(data []byte) []string {
	var parents []string
	for len(data) > 0 {
		line, rest, _ := bytes.Cut(data, []byte("\n"))
		if len(line) == 0 {
			break
		}
		if p, ok := bytes.CutPrefix(line, []byte("parent ")); ok {
			parents = append(parents, string(p))
		}
		data = rest
	}
	return parents
}

// descends reports whether old is reachable from tip through the commits of the pack.
func descends(commits map[string][]string, tip, old string) bool {
	seen := map[string]bool{tip: true}
	todo := []string{tip}
	for len(todo) > 0 {
		id := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		for _, p := range commits[id] {
			if p == old {
				return true
			}
			if !seen[p] {
				seen[p] = true
				todo = append(todo, p)
			}
		}
	}
	return false
}
