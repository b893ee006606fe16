package fakessm

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/bastion-dev/bastion/test/fakeaws"
)

// filterKeys are the keys DescribeInstanceInformation accepts in Filters
// (besides tag:<key>); the first eight are also the legacy keys.
var filterKeys = []string{"InstanceIds", "AgentVersion", "PingStatus", "PlatformTypes", "ActivationIds",
	"IamRole", "ResourceType", "AssociationStatus", "SourceIds", "SourceTypes", "tag-key"}

type filter struct {
	key    string
	values []string
}

func (s *Server) describeInstanceInformation(c *fakeaws.Call) (any, *fakeaws.Error) {
	var in struct {
		Filters []struct {
			Key    *string
			Values []string
		}
		InstanceInformationFilterList []struct {
			Key      *string  `json:"key"`
			ValueSet []string `json:"valueSet"`
		}
		MaxResults *int
		NextToken  *string
	}
	if e := c.Decode(&in); e != nil {
		return nil, e
	}
	if in.Filters != nil && in.InstanceInformationFilterList != nil {
		return nil, badRequest("InvalidInstanceInformationFilterValue",
			"InstanceInformationFilterList and Filters can't be used in the same request.")
	}
	var filters []filter
	for i, f := range in.Filters {
		if f.Key == nil {
			return nil, fakeaws.ValidationError(nil, fmt.Sprintf("filters.%d.member.key", i+1), "Member must not be null")
		}
		if len(f.Values) < 1 || len(f.Values) > 100 {
			return nil, fakeaws.ValidationError(f.Values, fmt.Sprintf("filters.%d.member.values", i+1), "Member must have length between 1 and 100")
		}
		if !strings.HasPrefix(*f.Key, "tag:") && !slices.Contains(filterKeys, *f.Key) {
			return nil, badRequest("InvalidFilterKey", "The filter key %s is not valid.", *f.Key)
		}
		filters = append(filters, filter{*f.Key, f.Values})
	}
	for i, f := range in.InstanceInformationFilterList {
		if f.Key == nil {
			return nil, fakeaws.ValidationError(nil, fmt.Sprintf("instanceInformationFilterList.%d.member.key", i+1), "Member must not be null")
		}
		if !slices.Contains(filterKeys[:8], *f.Key) {
			return nil, fakeaws.ValidationError(*f.Key, fmt.Sprintf("instanceInformationFilterList.%d.member.key", i+1),
				"Member must satisfy enum value set: [InstanceIds, AgentVersion, PingStatus, PlatformTypes, ActivationIds, IamRole, ResourceType, AssociationStatus]")
		}
		if len(f.ValueSet) < 1 || len(f.ValueSet) > 100 {
			return nil, badRequest("InvalidInstanceInformationFilterValue", "The filter value set is empty or too large.")
		}
		filters = append(filters, filter{*f.Key, f.ValueSet})
	}
	tagFilters, otherFilters := 0, 0
	for _, f := range filters {
		if strings.HasPrefix(f.key, "tag:") || f.key == "tag-key" {
			tagFilters++
		} else {
			otherFilters++
		}
		if f.key == "PingStatus" {
			for _, v := range f.values {
				if v != PingOnline && v != PingConnectionLost && v != PingInactive {
					return nil, badRequest("InvalidInstanceInformationFilterValue", "The filter value %s is not valid for key PingStatus.", v)
				}
			}
		}
		if f.key == "ResourceType" {
			for _, v := range f.values {
				if v != "ManagedInstance" && v != "EC2Instance" {
					return nil, badRequest("InvalidInstanceInformationFilterValue", "The filter value %s is not valid for key ResourceType.", v)
				}
			}
		}
	}
	if tagFilters > 0 && otherFilters > 0 {
		return nil, badRequest("InvalidInstanceInformationFilterValue", "Tag filters can't be combined with other filter keys.")
	}
	limit := 10
	if in.MaxResults != nil {
		limit = *in.MaxResults
		if limit < 5 || limit > 50 {
			return nil, fakeaws.ValidationError(limit, "maxResults", "Member must have value between 5 and 50")
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	var matched []*Instance
	for _, id := range s.sortedInstanceIDs() {
		inst := s.instances[id]
		if s.matches(inst, filters) {
			matched = append(matched, inst)
		}
	}
	items, next, perr := page(matched, in.NextToken, limit, func(inst *Instance) string { return inst.InstanceID },
		func(last string) (func(*Instance) bool, bool) {
			return func(inst *Instance) bool { return inst.InstanceID > last }, true
		})
	if perr != nil {
		return nil, perr
	}
	list := make([]map[string]any, 0, len(items))
	for _, inst := range items {
		list = append(list, s.infoJSON(inst))
	}
	out := map[string]any{"InstanceInformationList": list}
	if next != "" {
		out["NextToken"] = next
	}
	return out, nil
}

// page cuts the next page of at most limit items out of matched, which is
// in the order pages follow. The token is opaque to clients; it carries the
// key of the last item served, and the page resumes at the first item that
// comes after that one, so an item that left the list between two calls
// makes none skipped. resume gives that test for a token's key, or false
// for a key the service could not have issued. next is "" on the last page.
func page[T any](matched []T, token *string, limit int, key func(T) string,
	resume func(last string) (after func(T) bool, ok bool)) (items []T, next string, err *fakeaws.Error) {
	start := 0
	if token != nil {
		last, derr := decodeToken(*token)
		var after func(T) bool
		ok := derr == nil
		if ok {
			after, ok = resume(last)
		}
		if !ok {
			return nil, "", badRequest("InvalidNextToken", "The specified token isn't valid.")
		}
		start = len(matched)
		if i := slices.IndexFunc(matched, after); i >= 0 {
			start = i
		}
	}
	end := min(start+limit, len(matched))
	if end < len(matched) {
		next = encodeToken(key(matched[end-1]))
	}
	return matched[start:end], next, nil
}

func (s *Server) matches(inst *Instance, filters []filter) bool {
	for _, f := range filters {
		var field []string
		switch f.key {
		case "InstanceIds", "SourceIds":
			field = []string{inst.InstanceID}
		case "AgentVersion":
			field = []string{inst.AgentVersion}
		case "PingStatus":
			field = []string{s.pingStatus(inst)}
		case "PlatformTypes":
			field = []string{inst.PlatformType}
		case "ActivationIds":
			field = []string{inst.ActivationID}
		case "IamRole":
			field = []string{inst.IamRole}
		case "ResourceType":
			field = []string{inst.ResourceType}
		case "SourceTypes":
			field = []string{"AWS::SSM::ManagedInstance"}
		case "tag-key":
			for _, t := range inst.Tags {
				field = append(field, t.Key)
			}
		case "AssociationStatus":
			// associations are not modelled: nothing matches
		default: // tag:<key>
			key := strings.TrimPrefix(f.key, "tag:")
			for _, t := range inst.Tags {
				if t.Key == key {
					field = append(field, t.Value)
				}
			}
		}
		hit := false
		for _, v := range f.values {
			if slices.Contains(field, v) {
				hit = true
				break
			}
		}
		if !hit {
			return false
		}
	}
	return true
}

// infoJSON is an InstanceInformation entry; s.mu is held.
func (s *Server) infoJSON(inst *Instance) map[string]any {
	m := map[string]any{
		"InstanceId":       inst.InstanceID,
		"PingStatus":       s.pingStatus(inst),
		"ResourceType":     inst.ResourceType,
		"RegistrationDate": fakeaws.Epoch(inst.RegistrationDate),
		"IsLatestVersion":  false,
		"SourceId":         inst.InstanceID,
		"SourceType":       "AWS::SSM::ManagedInstance",
	}
	if !inst.LastPing.IsZero() {
		m["LastPingDateTime"] = fakeaws.Epoch(inst.LastPing)
	}
	for k, v := range map[string]string{
		"ActivationId": inst.ActivationID, "IamRole": inst.IamRole, "Name": inst.Name,
		"AgentVersion": inst.AgentVersion, "PlatformType": inst.PlatformType, "PlatformName": inst.PlatformName,
		"PlatformVersion": inst.PlatformVersion, "IPAddress": inst.IPAddress, "ComputerName": inst.ComputerName,
	} {
		if v != "" {
			m[k] = v
		}
	}
	return m
}

func encodeToken(afterID string) string {
	raw, _ := json.Marshal(map[string]string{"after": afterID, "v": strconv.Itoa(1)})
	return base64.StdEncoding.EncodeToString(raw)
}

func decodeToken(tok string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(tok)
	if err != nil {
		return "", fmt.Errorf("decode token: %w", err)
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err != nil || m["after"] == "" {
		return "", fmt.Errorf("bad token")
	}
	return m["after"], nil
}
