package ssm

import (
	"context"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
)

// activationTierSetting is the service setting holding the account's
// activation tier ("standard" or "advanced").
const activationTierSetting = "/ssm/managed-instance/activation-tier"

// preflight checks the account's activation tier.
func (l *Lifecycle) preflight(ctx context.Context) error {
	cctx, cancel := l.call(ctx)
	defer cancel()
	out, err := l.api.GetServiceSetting(cctx, &awsssm.GetServiceSettingInput{SettingId: aws.String(activationTierSetting)})
	if err != nil {
		err = apiError("preflight: get activation tier",
			fmt.Sprintf("ssm:GetServiceSetting on arn:aws:ssm:%s:<account>:servicesetting%s", l.cfg.Region, activationTierSetting), err)
		if !l.cfg.RequireAdvancedTier {
			l.log.Warn("activation tier unknown; going on because the advanced tier is not required",
				"step", "preflight", "error", err.Error())
			return nil
		}
		return err
	}
	var value, arn string
	if s := out.ServiceSetting; s != nil {
		value, arn = aws.ToString(s.SettingValue), aws.ToString(s.ARN)
	}
	if strings.EqualFold(value, "advanced") {
		l.log.Info("activation tier is advanced", "step", "preflight")
		return nil
	}
	if arn == "" {
		arn = fmt.Sprintf("arn:aws:ssm:%s:<account>:servicesetting%s", l.cfg.Region, activationTierSetting)
	}
	err = fmt.Errorf("ssm: preflight: the activation tier of region %s is %q, but Session Manager on hybrid (mi-) instances needs the advanced-instances tier; "+
		"enable it (charged per instance) with `aws ssm update-service-setting --setting-id %s --setting-value advanced`, "+
		"or set %s=false to register without Session Manager",
		l.cfg.Region, value, arn, EnvRequireAdvancedTier)
	if !l.cfg.RequireAdvancedTier {
		l.log.Warn("activation tier is not advanced: Session Manager will refuse sessions to this instance",
			"step", "preflight", "tier", value, "error", err.Error())
		return nil
	}
	return err
}
